//! The front ends: the connection loops of every listener (HTTP/1.1 and HTTP/2 in
//! [`server`], each connection in [`conn`], HTTP/3 in [`h3`], with [`idle`] timers), what they do around each
//! request ([`scope`], [`trace`]), the main port's service ([`kv`]: the KV API, the
//! `PURGE` method, and the proxy behind it), what a node answers its peers
//! ([`peer`], served on the cluster's transport), and making purges ([`purge`]),
//! which the admin API shares.

pub mod conn;
pub mod h3;
pub mod idle;
pub mod kv;
pub mod peer;
pub mod purge;
pub mod resp;
pub mod scope;
pub mod sendfile;
pub mod server;
pub mod trace;
pub mod write_order;
