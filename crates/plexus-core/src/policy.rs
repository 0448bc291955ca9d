//! Authorization: which topics an identity may join and which events it may push there.
//!
//! Rules come from the configuration file (`[[channels]]` tables) or from a profile's built-in
//! set. The first rule whose topic pattern matches decides; a topic no rule matches is denied.
//! Patterns are exact names (`lobby`), prefixes ending in `*` (`room:*`), and may bind the
//! caller's user id with `{sub}` (`user:{sub}` is joinable only by that user).

use crate::auth::Identity;
use crate::publication::HistoryOpts;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;

/// One channel rule as written in the configuration file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChannelRule {
    /// Topic pattern: exact, `prefix*`, with optional `{sub}`.
    pub topic: String,
    /// Any of these roles may join; empty means any authenticated user.
    #[serde(default)]
    pub join_roles: Vec<String>,
    /// All of these roles are needed to join (checked in addition to `join_roles`).
    #[serde(default)]
    pub join_roles_all: Vec<String>,
    /// Nobody may join (useful to carve an exception out of a broader rule that follows).
    #[serde(default)]
    pub deny: bool,
    /// Events clients may push; `"*"` allows any non-reserved event.
    #[serde(default = "any_event")]
    pub push_events: Vec<String>,
    /// Events only some roles may push: event → any of these roles. An event listed here is
    /// governed by this table alone (it need not be in `push_events`).
    #[serde(default)]
    pub event_roles: HashMap<String, Vec<String>>,
    /// Whether the sender of a push receives its own broadcast.
    #[serde(default)]
    pub echo: bool,
    /// How many times one user (`sub`) may be joined to one topic of this rule at once.
    #[serde(default)]
    pub max_per_user: Option<u32>,
    /// Track presence: `presence_state` on join, `presence_diff` on every change.
    #[serde(default)]
    pub presence: bool,
    /// Keep the last N broadcasts of each topic for recovery (0: no history).
    #[serde(default)]
    pub history_size: usize,
    /// Drop history entries older than this many seconds (0: keep until pushed out by size).
    #[serde(default)]
    pub history_ttl_secs: u64,
    /// The application's join hook for this rule's topics (an http(s) URL; `"off"`: none,
    /// not even the default `hooks.join_url`). See docs/hooks.md.
    #[serde(default)]
    pub join_hook: Option<String>,
    /// The application's push hook: client pushes of `push_hook_events` go there first.
    #[serde(default)]
    pub push_hook: Option<String>,
    /// Events that go to `push_hook`; `"*"` (the default) for every event.
    #[serde(default = "any_event")]
    pub push_hook_events: Vec<String>,
    /// Client events (pushes) sent to the webhook as `client_event`; `"*"` for every event.
    /// Empty (the default): none.
    #[serde(default)]
    pub webhook_events: Vec<String>,
}

fn any_event() -> Vec<String> {
    vec!["*".to_owned()]
}

impl ChannelRule {
    /// A rule that lets any authenticated user join `pattern` and push any event.
    pub fn open(pattern: &str) -> Self {
        ChannelRule {
            topic: pattern.to_owned(),
            join_roles: Vec::new(),
            join_roles_all: Vec::new(),
            deny: false,
            push_events: any_event(),
            event_roles: HashMap::new(),
            echo: false,
            max_per_user: None,
            presence: false,
            history_size: 0,
            history_ttl_secs: 0,
            join_hook: None,
            push_hook: None,
            push_hook_events: any_event(),
            webhook_events: Vec::new(),
        }
    }

    /// The push hook that `event` goes to, if any.
    pub fn push_hook_for(&self, event: &str) -> Option<&str> {
        let url = self.push_hook.as_deref()?;
        self.push_hook_events
            .iter()
            .any(|e| e == "*" || e == event)
            .then_some(url)
    }

    /// Whether pushes of `event` are sent to the webhook.
    pub fn webhook_client_event(&self, event: &str) -> bool {
        self.webhook_events.iter().any(|e| e == "*" || e == event)
    }

    /// Does this rule's pattern match `topic` for this identity?
    pub fn matches(&self, topic: &str, who: &Identity) -> bool {
        pattern_matches(&self.topic, topic, &who.sub)
    }

    /// May `who` push `event` on a channel governed by this rule?
    pub fn may_push(&self, who: &Identity, event: &str) -> bool {
        match self.event_roles.get(event) {
            Some(roles) => roles.iter().any(|r| who.has_role(r)),
            None => self.push_events.iter().any(|e| e == "*" || e == event),
        }
    }

    /// History settings of the rule's topics, if they keep history.
    pub fn history(&self) -> Option<HistoryOpts> {
        (self.history_size > 0).then(|| HistoryOpts {
            size: self.history_size,
            ttl: (self.history_ttl_secs > 0)
                .then(|| std::time::Duration::from_secs(self.history_ttl_secs)),
        })
    }

    /// Checks that the rule is well formed.
    pub fn validate(&self) -> Result<(), RuleError> {
        let pattern = || self.topic.clone();
        if self.topic.is_empty() {
            return Err(RuleError::EmptyPattern);
        }
        if self.max_per_user == Some(0) {
            return Err(RuleError::MaxPerUserZero(pattern()));
        }
        if let Some(var) = unknown_variable(&self.topic) {
            return Err(RuleError::UnknownVariable(pattern(), var));
        }
        if let Some(pos) = self.topic.find("{sub}") {
            let after = &self.topic[pos + "{sub}".len()..];
            if !(after.is_empty() || after.starts_with(':')) {
                return Err(RuleError::SubPlacement(pattern()));
            }
        }
        if let Some(pos) = self.topic.find('*') {
            if pos != self.topic.len() - 1 {
                return Err(RuleError::WildcardPlacement(pattern()));
            }
        }
        let hooks = [
            ("join_hook", &self.join_hook),
            ("push_hook", &self.push_hook),
        ];
        for (field, url) in hooks {
            match url.as_deref() {
                None => {}
                Some("off") if field == "join_hook" => {}
                Some(url) if is_http_url(url) => {}
                Some(url) => {
                    return Err(RuleError::HookUrl(pattern(), field, url.to_owned()));
                }
            }
        }
        Ok(())
    }
}

/// What is wrong with a channel rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("topic pattern is empty")]
    EmptyPattern,
    #[error("topic pattern {0:?}: max_per_user must be at least 1")]
    MaxPerUserZero(String),
    #[error("topic pattern {0:?}: {{sub}} must end the pattern or be followed by ':'")]
    SubPlacement(String),
    #[error("topic pattern {0:?}: '*' is only allowed at the end")]
    WildcardPlacement(String),
    #[error("topic pattern {0:?}: {1} {2:?} is not an http:// or https:// URL")]
    HookUrl(String, &'static str, String),
    #[error("topic pattern {0:?}: unknown variable {1:?} (the only one is {{sub}}, the user id)")]
    UnknownVariable(String, String),
    /// An earlier rule matches every topic this one would: it can never apply.
    #[error(
        "topic pattern {pattern:?} is never reached: the earlier rule channels[{by_index}] \
         (topic {by:?}) matches every topic it would (the first matching rule decides; put \
         the more specific rule first)"
    )]
    Shadowed {
        pattern: String,
        by: String,
        by_index: usize,
    },
}

/// Whether `url` looks like an http(s) URL with a host (hook and webhook URLs).
pub fn is_http_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace))
}

/// The first `{…}` of a pattern that is not `{sub}`.
fn unknown_variable(pattern: &str) -> Option<String> {
    let mut rest = pattern;
    while let Some(start) = rest.find('{') {
        let after = &rest[start..];
        let end = after.find('}').map_or(after.len(), |e| e + 1);
        let var = &after[..end];
        if var != "{sub}" {
            return Some(var.to_owned());
        }
        rest = &after[end..];
    }
    None
}

/// Whether every topic `later` matches is also matched by `earlier` (so that, the first match
/// deciding, `later` is never used). Conservative: `{sub}` patterns only cover themselves,
/// or are covered through their fixed prefix.
fn covers(earlier: &str, later: &str) -> bool {
    if earlier == later {
        return true;
    }
    let Some(prefix) = earlier.strip_suffix('*') else {
        return false;
    };
    if prefix.contains('{') {
        return false;
    }
    // What every topic of `later` starts with.
    let fixed = later
        .split('{')
        .next()
        .unwrap_or(later)
        .trim_end_matches('*');
    let later_is_exact = !later.contains('{') && !later.ends_with('*');
    if later_is_exact {
        later.starts_with(prefix)
    } else {
        fixed.starts_with(prefix)
    }
}

/// A rule of a policy that is not well formed: `index` is its position among the rules.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("channels[{index}]: {error}")]
pub struct PolicyError {
    pub index: usize,
    pub error: RuleError,
}

fn pattern_matches(pattern: &str, topic: &str, sub: &str) -> bool {
    let (pattern, wildcard) = match pattern.strip_suffix('*') {
        Some(p) => (p, true),
        None => (pattern, false),
    };
    // Expand {sub} without allocating when absent. A user id with the topic separator ':' (or
    // a '*') could reach into another user's namespace (`user:{sub}:*` with sub "a:b"), so such
    // ids never match a {sub} pattern.
    let expanded;
    let pattern = if pattern.contains("{sub}") {
        if sub.is_empty() || sub.contains([':', '*']) {
            return false;
        }
        expanded = pattern.replace("{sub}", sub);
        expanded.as_str()
    } else {
        pattern
    };
    if wildcard {
        topic.len() > pattern.len() && topic.starts_with(pattern)
    } else {
        topic == pattern
    }
}

/// Like [`pattern_matches`] with `{sub}` standing for any non-empty user id.
fn pattern_matches_any_sub(pattern: &str, topic: &str) -> bool {
    let Some((before, after)) = pattern.split_once("{sub}") else {
        return pattern_matches(pattern, topic, "");
    };
    let Some(rest) = topic.strip_prefix(before) else {
        return false;
    };
    match after.strip_suffix('*') {
        Some("") => !rest.is_empty(),
        Some(mid) => rest
            .find(mid)
            .is_some_and(|i| i > 0 && rest.len() > i + mid.len()),
        None if after.is_empty() => !rest.is_empty(),
        None => rest.strip_suffix(after).is_some_and(|id| !id.is_empty()),
    }
}

/// Why an action was refused; the text goes to the client as `{"reason": …}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied(pub &'static str);

/// The reason given for refused joins and pushes that rules forbid.
pub const UNAUTHORIZED: &str = "unauthorized";

/// The channel rules of a node. A joined channel keeps an `Arc` of its rule.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    rules: Vec<Arc<ChannelRule>>,
    /// Supabase channels on: a topic `realtime:<name>` is governed by the rule for `<name>`.
    supabase: bool,
}

impl Policy {
    pub fn new(rules: Vec<ChannelRule>) -> Result<Self, PolicyError> {
        for (index, r) in rules.iter().enumerate() {
            r.validate().map_err(|error| PolicyError { index, error })?;
            if let Some(by_index) = rules[..index]
                .iter()
                .position(|e| covers(&e.topic, &r.topic))
            {
                return Err(PolicyError {
                    index,
                    error: RuleError::Shadowed {
                        pattern: r.topic.clone(),
                        by: rules[by_index].topic.clone(),
                        by_index,
                    },
                });
            }
        }
        Ok(Policy {
            rules: rules.into_iter().map(Arc::new).collect(),
            supabase: false,
        })
    }

    /// Turns Supabase channels on: `realtime:<name>` topics follow the rule for `<name>`.
    pub fn with_supabase(mut self, on: bool) -> Self {
        self.supabase = on;
        self
    }

    /// The channel name of a Supabase channel (`realtime:<name>` with Supabase channels on).
    pub fn supabase_name<'a>(&self, topic: &'a str) -> Option<&'a str> {
        if self.supabase {
            topic.strip_prefix(crate::supabase::TOPIC_PREFIX)
        } else {
            None
        }
    }

    /// The name rules are matched against.
    fn rule_name<'a>(&self, topic: &'a str) -> &'a str {
        self.supabase_name(topic).unwrap_or(topic)
    }

    /// An open policy for trying things out: anyone authenticated may join `room:*` and push
    /// there, with presence and a history of the last 100 messages (5 minutes). (The server's
    /// dev profile uses these and the demo's topics: `src/demo/rules.rs`.)
    pub fn dev_default() -> Self {
        let mut room = ChannelRule::open("room:*");
        room.presence = true;
        room.history_size = 100;
        room.history_ttl_secs = 300;
        Policy {
            rules: vec![Arc::new(room)],
            supabase: false,
        }
    }

    pub fn rules(&self) -> &[Arc<ChannelRule>] {
        &self.rules
    }

    /// Decides a join; on success returns the rule that governs the channel.
    pub fn authorize_join(&self, who: &Identity, topic: &str) -> Result<Arc<ChannelRule>, Denied> {
        let topic = self.rule_name(topic);
        let rule = self
            .rules
            .iter()
            .find(|r| r.matches(topic, who))
            .ok_or(Denied("unauthorized"))?;
        if rule.deny {
            return Err(Denied("unauthorized"));
        }
        if !rule.join_roles.is_empty() && !rule.join_roles.iter().any(|r| who.has_role(r)) {
            return Err(Denied("unauthorized"));
        }
        if !rule.join_roles_all.iter().all(|r| who.has_role(r)) {
            return Err(Denied("unauthorized"));
        }
        Ok(rule.clone())
    }

    /// Whether a rule matches `topic` for `who` (allowing or denying it).
    pub fn governs(&self, who: &Identity, topic: &str) -> bool {
        let topic = self.rule_name(topic);
        self.rules.iter().any(|r| r.matches(topic, who))
    }

    /// The rule governing `topic` for publishes that come from no user (the HTTP API, the
    /// server itself): `{sub}` matches any user id.
    pub fn rule_for_topic(&self, topic: &str) -> Option<&ChannelRule> {
        let topic = self.rule_name(topic);
        self.rules
            .iter()
            .find(|r| pattern_matches_any_sub(&r.topic, topic))
            .map(|r| &**r)
    }

    /// History settings of `topic`, if its rule keeps history.
    pub fn history_for(&self, topic: &str) -> Option<HistoryOpts> {
        self.rule_for_topic(topic)?.history()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(sub: &str, roles: &[&str]) -> Identity {
        let mut id = Identity::new(sub);
        id.roles = crate::auth::Roles::new(roles.iter().copied());
        id
    }

    #[test]
    fn shadowed_rules_and_unknown_variables_are_refused() {
        let rule = |t: &str| ChannelRule::open(t);
        let e = Policy::new(vec![rule("room:*"), rule("room:staff")]).unwrap_err();
        assert_eq!(e.index, 1);
        assert!(e.to_string().contains("never reached"), "{e}");
        assert!(Policy::new(vec![rule("room:*"), rule("room:vip:*")]).is_err());
        assert!(Policy::new(vec![rule("*"), rule("user:{sub}")]).is_err());
        assert!(Policy::new(vec![rule("a:1"), rule("a:1")]).is_err());
        // The specific rule first is the right order; disjoint patterns are fine.
        assert!(Policy::new(vec![rule("room:staff"), rule("room:*")]).is_ok());
        assert!(Policy::new(vec![rule("user:{sub}"), rule("user:*")]).is_ok());
        assert!(Policy::new(vec![rule("room:*"), rule("rooms"), rule("ro")]).is_ok());
        let e = Policy::new(vec![rule("user:{id}")]).unwrap_err();
        assert!(e.to_string().contains("unknown variable \"{id}\""), "{e}");
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("room:*", "room:lobby", "a"));
        assert!(!pattern_matches("room:*", "room:", "a"));
        assert!(!pattern_matches("room:*", "rooms", "a"));
        assert!(pattern_matches("teacher", "teacher", "a"));
        assert!(!pattern_matches("teacher", "teachers", "a"));
        assert!(pattern_matches("user:{sub}", "user:alice", "alice"));
        assert!(!pattern_matches("user:{sub}", "user:bob", "alice"));
        assert!(pattern_matches("user:{sub}:*", "user:alice:inbox", "alice"));
        assert!(!pattern_matches("user:{sub}:*", "user:a:b:x", "a:b"));
        assert!(ChannelRule::open("user:{sub}*").validate().is_err());
        assert!(pattern_matches_any_sub("user:{sub}", "user:bob"));
        assert!(!pattern_matches_any_sub("user:{sub}", "user:"));
        assert!(pattern_matches_any_sub(
            "user:{sub}:inbox",
            "user:bob:inbox"
        ));
        assert!(!pattern_matches_any_sub(
            "user:{sub}:inbox",
            "user:bob:outbox"
        ));
        assert!(pattern_matches_any_sub("room:*", "room:x"));
    }

    #[test]
    fn first_match_decides_and_unmatched_is_denied() {
        let mut staff = ChannelRule::open("room:staff");
        staff.join_roles = vec!["staff".into()];
        let p = Policy::new(vec![staff, ChannelRule::open("room:*")]).unwrap();
        assert!(p.authorize_join(&who("a", &[]), "room:lobby").is_ok());
        assert_eq!(
            p.authorize_join(&who("a", &[]), "room:staff").unwrap_err(),
            Denied("unauthorized")
        );
        assert!(p
            .authorize_join(&who("a", &["staff"]), "room:staff")
            .is_ok());
        assert!(p.authorize_join(&who("a", &[]), "other").is_err());
    }

    #[test]
    fn all_of_roles_and_event_roles() {
        let mut r = ChannelRule::open("ops:*");
        r.join_roles_all = vec!["staff".into(), "oncall".into()];
        r.push_events = vec!["new_msg".into()];
        r.event_roles
            .insert("delete_msg".into(), vec!["moderator".into()]);
        let p = Policy::new(vec![r.clone()]).unwrap();
        assert!(p.authorize_join(&who("a", &["staff"]), "ops:1").is_err());
        assert!(p
            .authorize_join(&who("a", &["staff", "oncall"]), "ops:1")
            .is_ok());
        assert!(r.may_push(&who("a", &[]), "new_msg"));
        assert!(!r.may_push(&who("a", &[]), "typing"));
        assert!(!r.may_push(&who("a", &[]), "delete_msg"));
        assert!(r.may_push(&who("m", &["moderator"]), "delete_msg"));
    }

    #[test]
    fn invalid_pattern_is_named() {
        let e = Policy::new(vec![ChannelRule::open("ro*m")]).unwrap_err();
        assert_eq!(e.index, 0);
        assert!(e.to_string().starts_with("channels[0]: "), "{e}");
    }
}
