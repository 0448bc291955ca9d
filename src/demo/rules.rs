//! The dev profile's built-in channel rules (used when the configuration has no
//! `[[channels]]`): the chat's `room:*` and the classroom and live-data topics of the demo.
//!
//! | topic | who may join | push | presence | history |
//! |---|---|---|---|---|
//! | `room:*` | anyone signed in | any event | yes | last 100, 5 min |
//! | `teams:*` | roles `student` or `teacher` | any event | yes | last 50, 5 min |
//! | `teacher` | role `teacher` only | any event | yes | — |
//! | `user:{sub}` | only the user named in the topic | nothing (the server publishes) | — | — |
//! | `demo:*` | anyone signed in | nothing (the generator publishes) | — | last 20, 1 min |

use plexus_core::policy::{ChannelRule, Policy, PolicyError};

fn rule(topic: &str, f: impl FnOnce(&mut ChannelRule)) -> ChannelRule {
    let mut r = ChannelRule::open(topic);
    f(&mut r);
    r
}

/// The rules above, in order.
pub fn dev_rules() -> Vec<ChannelRule> {
    vec![
        rule("room:*", |r| {
            r.presence = true;
            r.history_size = 100;
            r.history_ttl_secs = 300;
        }),
        rule("teams:*", |r| {
            r.join_roles = vec!["student".into(), "teacher".into()];
            r.presence = true;
            r.history_size = 50;
            r.history_ttl_secs = 300;
        }),
        rule("teacher", |r| {
            r.join_roles = vec!["teacher".into()];
            r.presence = true;
        }),
        rule("user:{sub}", |r| r.push_events = Vec::new()),
        rule("demo:*", |r| {
            r.push_events = Vec::new();
            r.history_size = 20;
            r.history_ttl_secs = 60;
        }),
    ]
}

/// The dev profile's default policy.
pub fn dev_policy() -> Result<Policy, PolicyError> {
    Policy::new(dev_rules())
}

#[cfg(test)]
mod tests {
    use plexus_core::auth::Identity;

    fn who(sub: &str, roles: &[&str]) -> Identity {
        let mut id = Identity::new(sub);
        id.roles = plexus_core::auth::Roles::new(roles.iter().copied());
        id
    }

    #[test]
    fn the_classroom_rules_refuse_what_the_demo_shows_refused() {
        let p = super::dev_policy().unwrap();
        let student = who("sam", &["student"]);
        let teacher = who("tess", &["teacher"]);
        let guest = who("gus", &[]);
        assert!(p.authorize_join(&student, "teams:red").is_ok());
        assert!(p.authorize_join(&teacher, "teams:red").is_ok());
        assert!(p.authorize_join(&guest, "teams:red").is_err());
        assert!(p.authorize_join(&student, "teacher").is_err());
        assert!(p.authorize_join(&teacher, "teacher").is_ok());
        assert!(p.authorize_join(&student, "user:sam").is_ok());
        assert!(p.authorize_join(&student, "user:tess").is_err());
        assert!(p.authorize_join(&guest, "room:lobby").is_ok());
        assert!(p.authorize_join(&guest, "demo:ticker").is_ok());
        assert!(p.authorize_join(&guest, "elsewhere").is_err());
    }
}
