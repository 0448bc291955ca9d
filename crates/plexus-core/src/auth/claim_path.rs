//! Where in a token's claims the roles are: a path like `roles`, `realm_access.roles`
//! (Keycloak) or `https://example.com/roles` (an Auth0 namespaced claim).
//!
//! Syntax:
//! - the path is split at dots into claim names, each one level deeper: `realm_access.roles`
//!   is `{"realm_access": {"roles": [...]}}`;
//! - a name in double quotes is taken as it is, dots included:
//!   `"https://example.com/roles"`, or `"https://hasura.io/jwt/claims".x-hasura-allowed-roles`
//!   for a list inside a namespaced object (no escapes: a name cannot contain `"`);
//! - a path that starts with `http://` or `https://` and has no quote at all is one claim
//!   name, the whole string (the usual form of a namespaced claim, which is a URL).
//!
//! An empty name (`a..b`, a leading or trailing dot, `""`) or an unclosed quote is refused.

use serde_json::{Map, Value};

/// A parsed roles claim path (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimPath {
    names: Vec<String>,
}

impl ClaimPath {
    /// One top-level claim, named `name` as it is (no parsing).
    pub fn claim(name: &str) -> Self {
        ClaimPath {
            names: vec![name.to_owned()],
        }
    }

    /// Parses `path`; the error says what is wrong with it.
    pub fn parse(path: &str) -> Result<Self, String> {
        if !path.contains('"') && (path.starts_with("https://") || path.starts_with("http://")) {
            return Ok(ClaimPath {
                names: vec![path.to_owned()],
            });
        }
        let mut names = Vec::new();
        let mut rest = path;
        loop {
            let (name, after) = if let Some(quoted) = rest.strip_prefix('"') {
                let end = quoted
                    .find('"')
                    .ok_or_else(|| format!("{path:?}: a quote is not closed"))?;
                (&quoted[..end], &quoted[end + 1..])
            } else {
                let end = rest.find('.').unwrap_or(rest.len());
                if rest[..end].contains('"') {
                    return Err(format!(
                        "{path:?}: a quote may only enclose a whole claim name"
                    ));
                }
                (&rest[..end], &rest[end..])
            };
            if name.is_empty() {
                return Err(format!("{path:?}: empty claim name"));
            }
            names.push(name.to_owned());
            match after.strip_prefix('.') {
                Some(next) => rest = next,
                None if after.is_empty() => break,
                None => {
                    return Err(format!(
                        "{path:?}: a quoted name must be followed by a dot or the end"
                    ))
                }
            }
        }
        Ok(ClaimPath { names })
    }

    /// The top-level claim the path starts at.
    pub fn first(&self) -> &str {
        self.names.first().map_or("", String::as_str)
    }

    /// The value at this path, given the value of its top-level claim ([`ClaimPath::first`]),
    /// if every level below exists.
    pub fn below<'a>(&self, top: &'a Value) -> Option<&'a Value> {
        let mut value = top;
        for name in self.names.iter().skip(1) {
            value = value.as_object()?.get(name)?;
        }
        Some(value)
    }

    /// The value at this path in `claims`, if every level exists.
    pub fn get<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        let (first, deeper) = self.names.split_first()?;
        let mut value = claims.get(first)?;
        for name in deeper {
            value = value.as_object()?.get(name)?;
        }
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::ClaimPath;
    use serde_json::json;

    fn names(p: &str) -> Vec<String> {
        ClaimPath::parse(p).unwrap().names
    }

    #[test]
    fn paths_parse_into_claim_names() {
        assert_eq!(names("roles"), ["roles"]);
        assert_eq!(names("realm_access.roles"), ["realm_access", "roles"]);
        assert_eq!(
            names("https://example.com/roles"),
            ["https://example.com/roles"]
        );
        assert_eq!(
            names("\"https://example.com/roles\""),
            ["https://example.com/roles"]
        );
        assert_eq!(
            names("\"https://hasura.io/jwt/claims\".x-hasura-allowed-roles"),
            ["https://hasura.io/jwt/claims", "x-hasura-allowed-roles"]
        );
        assert_eq!(names("app.\"a.b\".c"), ["app", "a.b", "c"]);
        for bad in [
            "", ".roles", "roles.", "a..b", "\"\"", "\"open", "a\"b\"", "\"a\"b",
        ] {
            assert!(ClaimPath::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn get_walks_nested_objects() {
        let claims = json!({
            "realm_access": {"roles": ["admin"]},
            "https://example.com/roles": ["editor"],
            "flat.name": "x",
            "scalar": 3
        });
        let claims = claims.as_object().unwrap();
        let at = |p: &str| ClaimPath::parse(p).unwrap().get(claims).cloned();
        assert_eq!(at("realm_access.roles"), Some(json!(["admin"])));
        assert_eq!(at("https://example.com/roles"), Some(json!(["editor"])));
        assert_eq!(at("\"flat.name\""), Some(json!("x")));
        assert_eq!(at("flat.name"), None);
        assert_eq!(at("scalar.deeper"), None);
        assert_eq!(at("realm_access.missing"), None);
    }
}
