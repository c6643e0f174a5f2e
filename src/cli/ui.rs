//! `waymark ui`: serve the web console over a database until killed.

use super::CliResult;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct UiArgs {
    #[arg(long)]
    pub db: PathBuf,
    /// Address to listen on (port 0: any free port). A non-loopback address needs --token.
    #[arg(long, default_value = "127.0.0.1:7077")]
    pub listen: SocketAddr,
    /// Serve no action (cancel, send event, ...).
    #[arg(long)]
    pub read_only: bool,
    /// A token every request must carry (first visit: URL?token=T sets a cookie).
    #[arg(long)]
    pub token: Option<String>,
}

pub fn ui(args: UiArgs) -> CliResult {
    let mut options = waymark::console::Options::default()
        .listen(args.listen)
        .read_only(args.read_only);
    if let Some(t) = &args.token {
        options = options.token(t.clone());
    }
    let console = waymark::console::serve(&args.db, options).map_err(|e| e.to_string())?;
    // The first line of stdout is the URL (scripts and tests read it).
    println!("{}", console.url());
    let _ = std::io::stdout().flush();
    console.wait();
    Ok(0)
}
