//! Tokens as Supabase issues them, signed with the test secret: any claims ([`jwt`]), the anon
//! key ([`anon_key`]), a signed-in user's ([`supabase_user_jwt`]); and a connection with one.
#![allow(dead_code)]

use super::{Server, SECRET};
use serde_json::{json, Value};

/// An HS256 JWT with exactly these claims, signed with the test secret.
pub fn jwt(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

/// An `exp` an hour from now.
pub fn exp() -> u64 {
    plexus_core::auth::unix_now() + 3600
}

/// Supabase's anon key: no `sub`, `role: anon`.
pub fn anon_key() -> String {
    jwt(json!({"iss": "supabase", "role": "anon", "exp": exp()}))
}

/// A signed-in user's JWT as Supabase issues it.
pub fn supabase_user_jwt(sub: &str) -> String {
    jwt(json!({"sub": sub, "role": "authenticated", "aud": "authenticated", "exp": exp()}))
}

/// A WebSocket connection to `s` with `token`.
pub async fn connect(s: &Server, token: &str) -> plexus_client::Client {
    plexus_client::Client::connect(plexus_client::ConnectOptions::new(s.url()).token(token))
        .await
        .expect("connect")
}
