#[loopwatch::main]
async fn serve() {}

fn main() {}
