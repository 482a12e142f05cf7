//! The identity service's Kubernetes shell: tokens checked with the API
//! server's TokenReview, and the issuer read from its Secret through a
//! watch.

pub mod issuer_secret;
pub mod token_review;
