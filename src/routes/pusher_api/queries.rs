//! Reading through Pusher's HTTP API: `GET /apps/{app_id}/channels` (occupied channels,
//! `filter_by_prefix`, `info=user_count`), `/channels/{channel}` (`occupied`,
//! `subscription_count`, `user_count`) and `/channels/{channel}/users`, cluster-wide.

use super::events::check_info_attribute;
use super::*;

/// Subscriber counts of live topics (cluster-wide when the broker knows them).
pub(super) async fn occupancy(state: &AppState) -> std::collections::HashMap<String, usize> {
    state.node.channels().await.into_iter().collect()
}

/// Users present on `channel`: the keys of its Plexus presence (cluster-wide).
pub(super) async fn presence_users(state: &AppState, channel: &str) -> Vec<String> {
    match state.node.presence().state(channel).await {
        Value::Object(map) => map.into_iter().map(|(k, _)| k).collect(),
        _ => Vec::new(),
    }
}

/// `{attr: n}` for the asked attributes of one channel.
pub(super) async fn channel_attributes(
    state: &AppState,
    occupied: &std::collections::HashMap<String, usize>,
    channel: &str,
    info: &[impl AsRef<str>],
) -> Map<String, Value> {
    let mut m = Map::new();
    for attr in info {
        match attr.as_ref() {
            "subscription_count" => {
                let n = occupied.get(channel).copied().unwrap_or(0);
                m.insert("subscription_count".into(), json!(n));
            }
            "user_count" => {
                let n = presence_users(state, channel).await.len();
                m.insert("user_count".into(), json!(n));
            }
            _ => {}
        }
    }
    m
}

/// `GET /apps/{app_id}/channels[?filter_by_prefix=P][&info=user_count]`: occupied channels
/// whose names are Pusher channel names, `{"channels": {name: {}|{"user_count": n}}}`;
/// `user_count` needs `filter_by_prefix=presence-`.
pub(super) async fn channels(State(state): State<AppState>, signed: Signed) -> Response {
    let result = async {
        let params = signed.params;
        let prefix = param(&params, "filter_by_prefix").unwrap_or("");
        let info = info_attributes(param(&params, "info"));
        for attr in &info {
            if *attr != "user_count" {
                return Err(fail(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "unknown info attribute {:?} for the channel list (user_count)",
                        truncate(attr)
                    ),
                ));
            }
            if !is_presence(prefix) {
                return Err(fail(
                    StatusCode::BAD_REQUEST,
                    "info=user_count needs filter_by_prefix=presence-",
                ));
            }
        }
        let occupied = occupancy(&state).await;
        let mut names: Vec<&String> = occupied
            .iter()
            .filter(|(name, n)| {
                **n > 0 && name.starts_with(prefix) && wire::valid_channel_name(name)
            })
            .map(|(name, _)| name)
            .collect();
        names.sort();
        let mut channels = Map::new();
        for name in names {
            let attrs = channel_attributes(&state, &occupied, name, &info).await;
            channels.insert(name.clone(), Value::Object(attrs));
        }
        Ok::<_, Fail>(json!({ "channels": channels }))
    };
    match result.await {
        Ok(v) => Json(v).into_response(),
        Err((status, reason)) => json_error(status, reason),
    }
}

/// `GET /apps/{app_id}/channels/{channel}[?info=subscription_count,user_count]`:
/// `{"occupied": bool, …attributes}`.
pub(super) async fn channel(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    signed: Signed,
) -> Response {
    let result = async {
        let Path((_, channel)) = path_segments(path)?;
        let params = signed.params;
        check_channel(&state, &channel)?;
        let info = info_attributes(param(&params, "info"));
        for attr in &info {
            check_info_attribute(attr, is_presence(&channel))?;
        }
        let occupied = occupancy(&state).await;
        let mut answer = Map::new();
        let n = occupied.get(&channel).copied().unwrap_or(0);
        answer.insert("occupied".into(), json!(n > 0));
        answer.extend(channel_attributes(&state, &occupied, &channel, &info).await);
        Ok::<_, Fail>(Value::Object(answer))
    };
    match result.await {
        Ok(v) => Json(v).into_response(),
        Err((status, reason)) => json_error(status, reason),
    }
}

/// `GET /apps/{app_id}/channels/{channel}/users`: presence channels only,
/// `{"users": [{"id": …}]}` (the keys of the topic's presence, cluster-wide).
pub(super) async fn users(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    _signed: Signed,
) -> Response {
    let result = async {
        let Path((_, channel)) = path_segments(path)?;
        check_channel(&state, &channel)?;
        if !is_presence(&channel) {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                "users are only listed for presence- channels",
            ));
        }
        let mut ids = presence_users(&state, &channel).await;
        ids.sort();
        let users: Vec<Value> = ids.into_iter().map(|id| json!({ "id": id })).collect();
        Ok::<_, Fail>(json!({ "users": users }))
    };
    match result.await {
        Ok(v) => Json(v).into_response(),
        Err((status, reason)) => json_error(status, reason),
    }
}
