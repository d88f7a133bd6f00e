// Every argument of `#[tokio::main]` that `#[loopwatch::main]` takes.
#[loopwatch::main(flavor = "multi_thread", worker_threads = 3, crate = "::loopwatch")]
async fn main() {
    let metrics = tokio::runtime::Handle::current().metrics();
    assert_eq!(metrics.num_workers(), 3);
}
