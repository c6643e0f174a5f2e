//! `ui`: serve the web console over a database until killed, payloads decoded and event
//! payloads checked through the application's registry.

use super::{client, BuildRegistry, CliResult};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[doc(hidden)]
pub struct UiArgs {
    /// Database file.
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

/// The console's options from the command line.
pub(super) fn options(
    listen: SocketAddr,
    read_only: bool,
    token: Option<String>,
) -> crate::console::Options {
    let options = crate::console::Options::default()
        .listen(listen)
        .read_only(read_only);
    match token {
        Some(t) => options.token(t),
        None => options,
    }
}

/// Print the console's URL as the first line of stdout (scripts and tests read it).
pub(super) fn announce(console: &crate::console::Console) {
    println!("{}", console.url());
    let _ = std::io::stdout().flush();
}

pub fn ui(build: BuildRegistry, args: UiArgs) -> CliResult {
    let client = client(build, &args.db)?;
    let console =
        crate::console::serve_client(&client, options(args.listen, args.read_only, args.token))
            .map_err(|e| e.to_string())?;
    announce(&console);
    console.wait();
    Ok(0)
}
