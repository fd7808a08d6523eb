//! OAuth2 upstream authentication: per-account settings, the grants behind
//! `mailbridge auth`, stored tokens, the token manager shared by the
//! upstream clients, and SASL XOAUTH2.

pub mod cli;
pub mod config;
pub mod flows;
pub mod http;
pub mod manager;
pub mod retry;
pub mod sasl;
pub mod store;
pub mod tokens;

pub use tokens::Tokens;
