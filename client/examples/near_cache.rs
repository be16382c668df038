//! The near cache: hot reads served from process memory, kept coherent by the node
//! it watches. A purge acknowledged with `wait=all` (the default) has already
//! removed what it covered from every near cache.
//!
//! ```sh
//! cargo run -p fanz-client --example near_cache
//! ```

use std::time::{Duration, Instant};

use fanz_client::{Client, Purge, SetOptions};

#[tokio::main]
async fn main() -> Result<(), fanz_client::Error> {
    let endpoint =
        std::env::var("FANZ_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:9090".into());
    let token = std::env::var("FANZ_ADMIN_TOKEN").ok();
    let mut builder = Client::builder()
        .seeds([endpoint])
        .near_cache(10_000, Duration::from_secs(30));
    if let Some(token) = token {
        builder = builder.token(token);
    }
    let client = builder.build().await?;
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
