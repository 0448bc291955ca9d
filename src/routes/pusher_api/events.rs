//! Publishing through Pusher's HTTP API: `POST /apps/{app_id}/events` (one event to 1 to 100
//! channels) and `/batch_events` (up to 10 events, all checked before any is published), with
//! Pusher's limits, `socket_id` exclusion and the `info` answer.

use super::queries::{channel_attributes, occupancy};
use super::*;

/// One event of `POST /events` or of a batch.
#[derive(Deserialize)]
pub(super) struct EventBody {
    name: String,
    data: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    socket_id: Option<String>,
    #[serde(default)]
    info: Option<String>,
}

pub(super) const EVENT_SHAPE: &str = r#"{"name": string, "data": string, "channels": [string] or "channel": string, "socket_id"?: string, "info"?: string}"#;

/// A checked event, ready to publish.
pub(super) struct Checked {
    name: String,
    payload: Box<serde_json::value::RawValue>,
    channels: Vec<String>,
    info: Vec<String>,
}

/// Checks an event against Pusher's limits and the core's: 400 (413 for `data`).
pub(super) fn check_event(state: &AppState, e: EventBody) -> Result<Checked, Fail> {
    let channels = match (e.channel, e.channels) {
        (Some(c), None) => vec![c],
        (None, Some(cs)) => cs,
        _ => {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                "give either \"channel\" or \"channels\"",
            ))
        }
    };
    if channels.is_empty() || channels.len() > MAX_CHANNELS_PER_EVENT {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            format!(
                "an event goes to 1 to {MAX_CHANNELS_PER_EVENT} channels, not {}",
                channels.len()
            ),
        ));
    }
    for c in &channels {
        check_channel(state, c)?;
    }
    if e.name.is_empty() || e.name.chars().count() > MAX_NAME_CHARS {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            format!("an event name is 1 to {MAX_NAME_CHARS} characters"),
        ));
    }
    if e.name.starts_with("pusher:") || e.name.starts_with("pusher_internal:") {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "event names starting with pusher: or pusher_internal: are reserved for the protocol",
        ));
    }
    let limits = state.node.limits();
    if let Err(invalid) = limits.check_event(&e.name) {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            format!(
                "{invalid}: an event name is at most {} bytes and does not start with phx_",
                limits.max_event_bytes
            ),
        ));
    }
    let max = max_data_bytes(state);
    if e.data.len() > max {
        return Err(fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "data is {} bytes, more than {max} (Pusher's 10 KiB, or limits.max_message_bytes if smaller)",
                e.data.len()
            ),
        ));
    }
    if let Some(socket_id) = &e.socket_id {
        if !plexus_core::pusher::valid_socket_id(socket_id) {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                format!(
                    "invalid socket_id {:?}: expected digits.digits",
                    truncate(socket_id)
                ),
            ));
        }
    }
    let info: Vec<String> = info_attributes(e.info.as_deref())
        .into_iter()
        .map(String::from)
        .collect();
    for attr in &info {
        check_info_attribute(attr, channels.iter().all(|c| is_presence(c)))?;
    }
    Ok(Checked {
        name: e.name,
        payload: data_payload(e.data)?,
        channels,
        info,
    })
}

/// `subscription_count` anywhere; `user_count` on presence channels only (as Pusher).
pub(super) fn check_info_attribute(attr: &str, presence: bool) -> Result<(), Fail> {
    match attr {
        "subscription_count" => Ok(()),
        "user_count" if presence => Ok(()),
        "user_count" => Err(fail(
            StatusCode::BAD_REQUEST,
            "info=user_count is only for presence- channels",
        )),
        other => Err(fail(
            StatusCode::BAD_REQUEST,
            format!(
                "unknown info attribute {:?} (subscription_count, user_count)",
                truncate(other)
            ),
        )),
    }
}

/// Pusher's `data` is a string: Phoenix clients get the JSON value it encodes, or the string
/// itself (as a JSON string) when it is not JSON.
pub(super) fn data_payload(data: String) -> Result<Box<serde_json::value::RawValue>, Fail> {
    let raw = if serde_json::from_str::<serde::de::IgnoredAny>(&data).is_ok() {
        serde_json::value::RawValue::from_string(data)
    } else {
        serde_json::value::to_raw_value(&data)
    };
    raw.map_err(|e| fail(StatusCode::BAD_REQUEST, format!("data not encodable: {e}")))
}

/// Publishes a checked event to each of its channels; 503 if the broker refuses.
pub(super) async fn publish(
    state: &AppState,
    e: &Checked,
    socket_id: Option<&str>,
) -> Result<(), Fail> {
    // The connection with that socket_id, on whichever node, does not receive it.
    let sender = plexus_core::publication::Sender {
        presence_key: None,
        exclude_socket: socket_id.map(Into::into),
    };
    for channel in &e.channels {
        let payload = Payload::Json(e.payload.clone());
        let published = state
            .node
            .publish_from(channel, &e.name, payload, None, sender.clone())
            .await;
        if let Err(err) = published {
            return Err(fail(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not published to {channel}: {err}"),
            ));
        }
    }
    Ok(())
}

/// The answer to an event: `{}`, or `{"channels": {name: {attr: n}}}` when `info` asked.
pub(super) async fn event_answer(state: &AppState, e: &Checked) -> Map<String, Value> {
    let mut channels = Map::new();
    if e.info.is_empty() {
        return channels;
    }
    let occupied = occupancy(state).await;
    for c in &e.channels {
        let attrs = channel_attributes(state, &occupied, c, &e.info).await;
        channels.insert(c.clone(), Value::Object(attrs));
    }
    channels
}

/// `POST /apps/{app_id}/events`: answers `{}` (or the channels' `info`).
pub(super) async fn events(State(state): State<AppState>, signed: Signed) -> Response {
    let result = async {
        let body = signed.body;
        let e: EventBody = parse(&body, EVENT_SHAPE)?;
        let socket_id = e.socket_id.clone();
        let checked = check_event(&state, e)?;
        publish(&state, &checked, socket_id.as_deref()).await?;
        let channels = event_answer(&state, &checked).await;
        Ok::<_, Fail>(if channels.is_empty() {
            json!({})
        } else {
            json!({ "channels": channels })
        })
    };
    match result.await {
        Ok(v) => Json(v).into_response(),
        Err((status, reason)) => json_error(status, reason),
    }
}

#[derive(Deserialize)]
pub(super) struct BatchBody {
    batch: Vec<EventBody>,
}

/// `POST /apps/{app_id}/batch_events {"batch": [event…]}`: up to 10 events, each with one
/// `channel`; all are checked before any is published. Answers `{}`, or
/// `{"batch": [{attr: n}…]}` when an event asked `info`.
pub(super) async fn batch_events(State(state): State<AppState>, signed: Signed) -> Response {
    let result = async {
        let body = signed.body;
        let shape = format!(r#"{{"batch": [{EVENT_SHAPE}]}}"#);
        let b: BatchBody = parse(&body, &shape)?;
        if b.batch.len() > MAX_BATCH_EVENTS {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                format!(
                    "a batch holds at most {MAX_BATCH_EVENTS} events, not {}",
                    b.batch.len()
                ),
            ));
        }
        let mut checked = Vec::with_capacity(b.batch.len());
        for e in b.batch {
            if e.channels.is_some() {
                return Err(fail(
                    StatusCode::BAD_REQUEST,
                    "an event of a batch has one \"channel\", not \"channels\"",
                ));
            }
            let socket_id = e.socket_id.clone();
            checked.push((check_event(&state, e)?, socket_id));
        }
        for (e, socket_id) in &checked {
            publish(&state, e, socket_id.as_deref()).await?;
        }
        if checked.iter().all(|(e, _)| e.info.is_empty()) {
            return Ok(json!({}));
        }
        let occupied = occupancy(&state).await;
        let mut answers = Vec::with_capacity(checked.len());
        for (e, _) in &checked {
            let attrs = match e.channels.first() {
                Some(c) => channel_attributes(&state, &occupied, c, &e.info).await,
                None => Map::new(),
            };
            answers.push(Value::Object(attrs));
        }
        Ok::<_, Fail>(json!({ "batch": answers }))
    };
    match result.await {
        Ok(v) => Json(v).into_response(),
        Err((status, reason)) => json_error(status, reason),
    }
}
