//! The near cache: hot reads served from process memory, kept coherent by the node
//! it watches. A purge acknowledged with `wait=all` (the default) has already
//! removed what it covered from every near cache.
//!
//! ```sh
//! cargo run -p fanz-client --example near_cache
//! ```

use std::time::{Duration, Instant};

use fanz_client::{ClientBuilder, Purge, SetOptions};

#[tokio::main]
async fn main() -> Result<(), fanz_client::Error> {
    // FANZ_ENDPOINT (default http://127.0.0.1:9090) and FANZ_ADMIN_TOKEN.
    let client = ClientBuilder::from_env()
        .near_cache(10_000, Duration::from_secs(30))
        .build()
        .await?;
    client
        .set("config:flags", "dark-mode=on", &SetOptions::default())
        .await?;
    // Let the watch come up (its first heartbeat), then read once to fill the cache.
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.get("config:flags").await?;

    let started = Instant::now();
    for _ in 0..100_000 {
        client.get("config:flags").await?;
    }
    println!(
        "100 000 reads in {:?} ({} value(s) held in process)",
        started.elapsed(),
        client.near_cache_len()
    );

    client.purge(&Purge::key("config:flags")).await?;
    assert_eq!(client.get("config:flags").await?, None);
    println!("after the purge: gone, here too");
    Ok(())
}
