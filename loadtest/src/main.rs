fn main() {
    eprintln!("shardcast-loadtest: not implemented yet");
    std::process::exit(2);
}
