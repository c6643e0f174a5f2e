//! The `waymark` command-line tool. The binary alone prints and chooses exit codes.

mod cli;

fn main() {
    // Step children of this binary serve steps here and never return.
    waymark::hook(cli::registry);
    std::process::exit(cli::main());
}
