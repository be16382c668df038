//! `get_or_set`: read-through caching with single flight. Fifty concurrent requests
//! for the same missing key run the expensive producer once.
//!
//! ```sh
//! cargo run -p fanz-client --example get_or_set
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fanz_client::{ClientBuilder, SetOptions};

#[tokio::main]
async fn main() -> Result<(), fanz_client::Error> {
    // FANZ_ENDPOINT (default http://127.0.0.1:9090) and FANZ_ADMIN_TOKEN.
    let client = ClientBuilder::from_env().build().await?;
    client.delete("report:daily").await?;

    let runs = Arc::new(AtomicUsize::new(0));
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (client, runs) = (client.clone(), runs.clone());
        requests.spawn(async move {
            let options = SetOptions::ttl(Duration::from_secs(60));
            client
                .get_or_set("report:daily", &options, || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await; // the slow query
                    Ok::<_, std::io::Error>(Bytes::from("42 orders"))
                })
                .await
        });
    }
    while let Some(answer) = requests.join_next().await {
        answer.expect("task")?;
    }
    println!(
        "50 requests, producer ran {} time(s)",
        runs.load(Ordering::SeqCst)
    );
    Ok(())
}
