#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    eprintln!("shardcast: the server is not implemented yet (see the status table in README.md)");
    std::process::exit(2);
}
