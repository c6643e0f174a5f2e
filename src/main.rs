//! The `waymark` command-line tool. The binary alone prints and chooses exit codes.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
