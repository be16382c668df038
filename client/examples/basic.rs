//! Basic use: connect through any node's admin API, write with a TTL and tags, read
//! with metadata, delete.
//!
//! ```sh
//! cargo run --release &                                   # a node on built-in defaults
//! cargo run -p fanz-client --example basic               # FANZ_ENDPOINT, FANZ_ADMIN_TOKEN to change
//! ```

use std::time::Duration;

use fanz_client::{ClientBuilder, SetOptions};

#[tokio::main]
async fn main() -> Result<(), fanz_client::Error> {
    // FANZ_ENDPOINT (default http://127.0.0.1:9090) and FANZ_ADMIN_TOKEN.
    let client = ClientBuilder::from_env().build().await?;

    let options = SetOptions::ttl(Duration::from_secs(300)).tag("users");
    client.set("user:42", "Ada Lovelace", &options).await?;

    if let Some(v) = client.get_with_meta("user:42").await? {
        println!(
            "user:42 = {:?} (version {:x}, age {:?}, tags {:?})",
            v.value, v.version, v.age, v.tags
        );
    }
    println!(
        "owners of user:42: {:?}",
        client
            .owners("user:42")
            .iter()
            .map(|m| &m.id)
            .collect::<Vec<_>>()
    );

    client.delete("user:42").await?;
    assert_eq!(client.get("user:42").await?, None);
    println!("deleted");
    Ok(())
}
