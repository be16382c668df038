//! Purging by tag, and dependencies: a page that depends on a product is invalidated
//! when the product's tag is purged. The purge returns once every member applied it.
//!
//! ```sh
//! cargo run -p fanz-client --example purge_by_tag
//! ```

use fanz_client::{ClientBuilder, Dependency, Purge, SetOptions};

#[tokio::main]
async fn main() -> Result<(), fanz_client::Error> {
    // FANZ_ENDPOINT (default http://127.0.0.1:9090) and FANZ_ADMIN_TOKEN.
    let client = ClientBuilder::from_env().build().await?;

    client
        .set(
            "product:7",
            "Teapot, 12 EUR",
            &SetOptions::default().tag("catalog"),
        )
        .await?;
    client
        .set(
            "page:product-7",
            "<h1>Teapot</h1><p>12 EUR</p>",
            &SetOptions::default().depends_on(Dependency::Key(b"product:7".to_vec())),
        )
        .await?;

    let report = client.purge(&Purge::tag("catalog")).await?;
    println!(
        "purged tag catalog: {} dependent key(s) invalidated; cluster report: {}",
        report.dependents_invalidated,
        report.raw.get("cluster").cloned().unwrap_or_default()
    );
    assert_eq!(client.get("product:7").await?, None);
    assert_eq!(client.get("page:product-7").await?, None);
    println!("product:7 and the page built from it are gone");
    Ok(())
}
