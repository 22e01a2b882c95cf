//! The classic `@socket.io/redis-adapter` 8.x protocol (the one `@socket.io/redis-emitter` 5.x speaks), sans-IO:
//! channel names, broadcasts, requests and responses as bytes in and bytes out.
//!
//! - Broadcasts are MessagePack `[uid, {type: 2, data: [event, ...args], nsp}, {rooms, except, flags}]` on
//!   `<prefix>#<nsp>#`, or `<prefix>#<nsp>#<room>#` when there is exactly one room. Binary stays inline (`bin`).
//! - Requests go to `<prefix>-request#<nsp>#`: JSON (first byte `{`), except BROADCAST (7), which is MessagePack.
//! - Responses go to `<prefix>-response#<nsp>#`: JSON, except BROADCAST_ACK (9), which is MessagePack.
//!
//! Socket.IO arguments cross into shardcast's sockets as JSON with binary placeholders
//! (`{"_placeholder":true,"num":N}`) plus attachments; dates (MessagePack timestamps) become their ISO 8601 text, as
//! `JSON.stringify` of a `Date` gives.

use serde_json::Value as Json;

use super::msgpack::{self, Value};

/// The uid `@socket.io/redis-emitter` puts in its broadcasts.
pub const EMITTER_UID: &str = "emitter";
/// The Socket.IO packet type of the broadcast packets (EVENT).
pub const PACKET_TYPE_EVENT: i64 = 2;

/// Request types (`RequestType` of the adapter).
pub mod request_type {
    /// Legacy list of socket ids.
    pub const SOCKETS: i64 = 0;
    /// Every room of every node.
    pub const ALL_ROOMS: i64 = 1;
    /// socketsJoin.
    pub const REMOTE_JOIN: i64 = 2;
    /// socketsLeave.
    pub const REMOTE_LEAVE: i64 = 3;
    /// disconnectSockets.
    pub const REMOTE_DISCONNECT: i64 = 4;
    /// fetchSockets.
    pub const REMOTE_FETCH: i64 = 5;
    /// serverSideEmit (and its acknowledgements, as responses).
    pub const SERVER_SIDE_EMIT: i64 = 6;
    /// A broadcast with acknowledgements.
    pub const BROADCAST: i64 = 7;
    /// Response: how many clients a BROADCAST reached on one node.
    pub const BROADCAST_CLIENT_COUNT: i64 = 8;
    /// Response: one client's acknowledgement of a BROADCAST.
    pub const BROADCAST_ACK: i64 = 9;
}

/// Why a channel message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Not MessagePack.
    #[error("not MessagePack: {0}")]
    MsgPack(#[from] msgpack::DecodeError),
    /// Not JSON.
    #[error("not JSON: {0}")]
    Json(String),
    /// Valid encoding, wrong shape.
    #[error("unexpected message shape: {0}")]
    Shape(&'static str),
}

/// The channels of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channels {
    /// `<prefix>#<nsp>#`: broadcasts (a room name and `#` follow for single-room broadcasts).
    pub broadcast: String,
    /// `<prefix>-request#<nsp>#`.
    pub request: String,
    /// `<prefix>-response#<nsp>#`.
    pub response: String,
    /// `<prefix>-response#<nsp>#<uid>#`.
    pub specific_response: String,
}

impl Channels {
    /// The channels of namespace `nsp` for the node `uid`.
    pub fn new(prefix: &str, nsp: &str, uid: &str) -> Channels {
        let response = format!("{prefix}-response#{nsp}#");
        Channels {
            broadcast: format!("{prefix}#{nsp}#"),
            request: format!("{prefix}-request#{nsp}#"),
            specific_response: format!("{response}{uid}#"),
            response,
        }
    }

    /// The pattern every node PSUBSCRIBEs to.
    pub fn broadcast_pattern(&self) -> String {
        format!("{}*", self.broadcast)
    }

    /// Where a broadcast to `rooms` is published.
    pub fn broadcast_channel(&self, rooms: &[String]) -> String {
        match rooms {
            [room] => format!("{}{room}#", self.broadcast),
            _ => self.broadcast.clone(),
        }
    }
}

/// Which sockets an operation applies to: members of any of `rooms` (every socket if empty) that are in none of
/// `except`. A socket is also in the room named by its own id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selector {
    /// Rooms; empty: all sockets.
    pub rooms: Vec<String>,
    /// Rooms whose members are excluded.
    pub except: Vec<String>,
}

/// One broadcast read from a `<prefix>#<nsp>#...` channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Broadcast {
    /// The sending node's uid (`emitter` for the emitter).
    pub uid: String,
    /// The namespace (`/` when absent).
    pub nsp: String,
    /// `[event, ...args]`.
    pub data: Vec<Value>,
    /// Target sockets.
    pub selector: Selector,
    /// The flags map as sent (`volatile`, `compress`, `timeout`, ...).
    pub flags: Value,
}

/// An event as a shardcast socket sends it: its name, its arguments as a JSON array with binary placeholders, and
/// the attachments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketEvent {
    /// Event name.
    pub name: String,
    /// The arguments after the name, a JSON array.
    pub args: String,
    /// Binary attachments the placeholders refer to.
    pub attachments: Vec<Vec<u8>>,
}

/// A request read from `<prefix>-request#<nsp>#`.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The requesting node (absent in the emitter's requests).
    pub uid: Option<String>,
    /// The request id (present when an answer is expected).
    pub request_id: Option<String>,
    /// What is asked.
    pub kind: RequestKind,
}

/// The request types this node answers or applies.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestKind {
    /// SOCKETS (0): the ids of the sockets in `rooms`.
    Sockets {
        /// Rooms (empty: all).
        rooms: Vec<String>,
    },
    /// ALL_ROOMS (1).
    AllRooms,
    /// REMOTE_JOIN (2) with `opts`: the selected sockets join `rooms`.
    Join {
        /// Which sockets.
        selector: Selector,
        /// Rooms to join.
        rooms: Vec<String>,
    },
    /// REMOTE_LEAVE (3) with `opts`.
    Leave {
        /// Which sockets.
        selector: Selector,
        /// Rooms to leave.
        rooms: Vec<String>,
    },
    /// REMOTE_JOIN (2) of one socket by id (the adapter's older form; answered with `{requestId}`).
    JoinOne {
        /// Socket id.
        sid: String,
        /// Room.
        room: String,
    },
    /// REMOTE_LEAVE (3) of one socket by id.
    LeaveOne {
        /// Socket id.
        sid: String,
        /// Room.
        room: String,
    },
    /// REMOTE_DISCONNECT (4) with `opts`.
    Disconnect {
        /// Which sockets.
        selector: Selector,
        /// Close the whole connection, not only the namespace.
        close: bool,
    },
    /// REMOTE_DISCONNECT (4) of one socket by id.
    DisconnectOne {
        /// Socket id.
        sid: String,
        /// Close the whole connection.
        close: bool,
    },
    /// REMOTE_FETCH (5).
    Fetch {
        /// Which sockets.
        selector: Selector,
    },
    /// SERVER_SIDE_EMIT (6): `[event, ...args]` for the servers' own listeners.
    ServerSideEmit {
        /// `[event, ...args]`, as JSON.
        data: Vec<Json>,
    },
    /// BROADCAST (7): a broadcast whose clients acknowledge.
    Broadcast {
        /// `[event, ...args]`.
        data: Vec<Value>,
        /// Target sockets.
        selector: Selector,
        /// Flags (`timeout` is the ack timeout in ms).
        flags: Value,
    },
}

/// What one node reports about one socket in a fetchSockets answer.
#[derive(Debug, Clone, PartialEq)]
pub struct SocketInfo {
    /// Socket id.
    pub id: String,
    /// The handshake object (JSON).
    pub handshake: Json,
    /// Its rooms, its own id first (as socket.io lists them).
    pub rooms: Vec<String>,
    /// `socket.data` (JSON).
    pub data: Json,
}

fn str_list(v: Option<&Value>) -> Result<Vec<String>, CodecError> {
    match v {
        None | Some(Value::Nil) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| room_name(i).ok_or(CodecError::Shape("a room is not a string or a number")))
            .collect(),
        Some(_) => Err(CodecError::Shape("rooms is not an array")),
    }
}

/// A room as a string: numbers (the adapter allows them) in JavaScript's spelling.
fn room_name(v: &Value) -> Option<String> {
    match v {
        Value::Str(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::UInt(u) => Some(u.to_string()),
        Value::F64(x) if x.fract() == 0.0 && x.abs() < 1e21 => Some(format!("{}", *x as i64)),
        Value::F64(x) if x.is_finite() => Some(x.to_string()),
        _ => None,
    }
}

fn selector(opts: Option<&Value>) -> Result<Selector, CodecError> {
    let Some(opts) = opts else {
        return Ok(Selector::default());
    };
    if !matches!(opts, Value::Map(_)) {
        return Err(CodecError::Shape("opts is not a map"));
    }
    Ok(Selector {
        rooms: str_list(opts.get("rooms"))?,
        except: str_list(opts.get("except"))?,
    })
}

fn event_data(packet: &Value) -> Result<(String, Vec<Value>), CodecError> {
    if !matches!(packet, Value::Map(_)) {
        return Err(CodecError::Shape("packet is not a map"));
    }
    let nsp = match packet.get("nsp") {
        None | Some(Value::Nil) => "/".to_owned(),
        Some(Value::Str(s)) => s.clone(),
        Some(_) => return Err(CodecError::Shape("packet.nsp is not a string")),
    };
    match packet.get("type").and_then(Value::as_i64) {
        Some(PACKET_TYPE_EVENT) | Some(5) => {}
        _ => return Err(CodecError::Shape("packet.type is not EVENT")),
    }
    let Some(Value::Array(data)) = packet.get("data") else {
        return Err(CodecError::Shape("packet.data is not an array"));
    };
    if data.first().and_then(Value::as_str).is_none() {
        return Err(CodecError::Shape(
            "packet.data does not start with an event name",
        ));
    }
    Ok((nsp, data.clone()))
}

/// Reads a broadcast channel message.
pub fn decode_broadcast(bytes: &[u8]) -> Result<Broadcast, CodecError> {
    let Value::Array(mut parts) = msgpack::decode(bytes)? else {
        return Err(CodecError::Shape("broadcast is not an array"));
    };
    if parts.len() < 3 {
        return Err(CodecError::Shape("broadcast has fewer than 3 elements"));
    }
    let opts = parts.swap_remove(2);
    let packet = parts.swap_remove(1);
    let uid = match &parts[0] {
        Value::Str(s) => s.clone(),
        _ => return Err(CodecError::Shape("broadcast uid is not a string")),
    };
    let (nsp, data) = event_data(&packet)?;
    let selector = selector(Some(&opts))?;
    let flags = opts.get("flags").cloned().unwrap_or(Value::Nil);
    Ok(Broadcast {
        uid,
        nsp,
        data,
        selector,
        flags,
    })
}

fn strs(v: &[String]) -> Value {
    Value::Array(v.iter().map(|s| Value::str(s.as_str())).collect())
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::str(k), v))
            .collect(),
    )
}

/// A broadcast channel message as the adapter writes it: `[uid, {type: 2, data, nsp}, {rooms, except, flags: {}}]`.
pub fn encode_broadcast(uid: &str, nsp: &str, data: Vec<Value>, selector: &Selector) -> Vec<u8> {
    msgpack::encode(&Value::Array(vec![
        Value::str(uid),
        map(vec![
            ("type", Value::Int(PACKET_TYPE_EVENT)),
            ("data", Value::Array(data)),
            ("nsp", Value::str(nsp)),
        ]),
        map(vec![
            ("rooms", strs(&selector.rooms)),
            ("except", strs(&selector.except)),
            ("flags", Value::Map(Vec::new())),
        ]),
    ]))
}

/// Reads a request channel message (JSON if it starts with `{`, else MessagePack).
pub fn decode_request(bytes: &[u8]) -> Result<Request, CodecError> {
    let v = if bytes.first() == Some(&b'{') {
        let j: Json = serde_json::from_slice(bytes).map_err(|e| CodecError::Json(e.to_string()))?;
        json_to_msgpack(&j, &[])
    } else {
        msgpack::decode(bytes)?
    };
    if !matches!(v, Value::Map(_)) {
        return Err(CodecError::Shape("request is not a map"));
    }
    let opt_str = |key: &str| -> Result<Option<String>, CodecError> {
        match v.get(key) {
            None | Some(Value::Nil) => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s.clone())),
            Some(_) => Err(CodecError::Shape(
                "uid, requestId, sid and room must be strings",
            )),
        }
    };
    let uid = opt_str("uid")?;
    let request_id = opt_str("requestId")?;
    let ty = v
        .get("type")
        .and_then(Value::as_i64)
        .ok_or(CodecError::Shape("request type is not a number"))?;
    let close = matches!(v.get("close"), Some(Value::Bool(true)));
    let one = |what: &str| -> Result<Option<(String, String)>, CodecError> {
        match (opt_str("sid")?, opt_str(what)?) {
            (Some(sid), Some(room)) => Ok(Some((sid, room))),
            _ => Ok(None),
        }
    };
    use request_type::*;
    let kind = match ty {
        SOCKETS => RequestKind::Sockets {
            rooms: str_list(v.get("rooms"))?,
        },
        ALL_ROOMS => RequestKind::AllRooms,
        REMOTE_JOIN | REMOTE_LEAVE if v.get("opts").is_some() => {
            let selector = selector(v.get("opts"))?;
            let rooms = str_list(v.get("rooms"))?;
            if ty == REMOTE_JOIN {
                RequestKind::Join { selector, rooms }
            } else {
                RequestKind::Leave { selector, rooms }
            }
        }
        REMOTE_JOIN | REMOTE_LEAVE => {
            let (sid, room) =
                one("room")?.ok_or(CodecError::Shape("join/leave without opts nor sid"))?;
            if ty == REMOTE_JOIN {
                RequestKind::JoinOne { sid, room }
            } else {
                RequestKind::LeaveOne { sid, room }
            }
        }
        REMOTE_DISCONNECT if v.get("opts").is_some() => RequestKind::Disconnect {
            selector: selector(v.get("opts"))?,
            close,
        },
        REMOTE_DISCONNECT => RequestKind::DisconnectOne {
            sid: opt_str("sid")?.ok_or(CodecError::Shape("disconnect without opts nor sid"))?,
            close,
        },
        REMOTE_FETCH => RequestKind::Fetch {
            selector: selector(v.get("opts"))?,
        },
        SERVER_SIDE_EMIT => {
            let Some(Value::Array(data)) = v.get("data") else {
                return Err(CodecError::Shape("serverSideEmit data is not an array"));
            };
            if data.first().and_then(Value::as_str).is_none() {
                return Err(CodecError::Shape("serverSideEmit data has no event name"));
            }
            RequestKind::ServerSideEmit {
                data: data.iter().map(msgpack_to_plain_json).collect(),
            }
        }
        BROADCAST => {
            let packet = v
                .get("packet")
                .ok_or(CodecError::Shape("broadcast without packet"))?;
            let (_nsp, data) = event_data(packet)?;
            let opts = v.get("opts");
            RequestKind::Broadcast {
                data,
                selector: selector(opts)?,
                flags: opts
                    .and_then(|o| o.get("flags"))
                    .cloned()
                    .unwrap_or(Value::Nil),
            }
        }
        _ => return Err(CodecError::Shape("unknown request type")),
    };
    Ok(Request {
        uid,
        request_id,
        kind,
    })
}

fn js(s: &str) -> String {
    Json::String(s.to_owned()).to_string()
}

/// Answer to SOCKETS (0): `{"requestId":..,"sockets":[ids]}`.
pub fn encode_sockets_response(request_id: &str, ids: &[String]) -> String {
    format!(
        "{{\"requestId\":{},\"sockets\":{}}}",
        js(request_id),
        serde_json::to_string(ids).unwrap_or_else(|_| "[]".into())
    )
}

/// Answer to ALL_ROOMS (1): `{"requestId":..,"rooms":[..]}`.
pub fn encode_rooms_response(request_id: &str, rooms: &[String]) -> String {
    format!(
        "{{\"requestId\":{},\"rooms\":{}}}",
        js(request_id),
        serde_json::to_string(rooms).unwrap_or_else(|_| "[]".into())
    )
}

/// Answer to a one-socket join/leave/disconnect: `{"requestId":..}`.
pub fn encode_done_response(request_id: &str) -> String {
    format!("{{\"requestId\":{}}}", js(request_id))
}

/// Answer to REMOTE_FETCH (5): `{"requestId":..,"sockets":[{id,handshake,rooms,data}]}`.
pub fn encode_fetch_response(request_id: &str, sockets: &[SocketInfo]) -> String {
    let mut out = format!("{{\"requestId\":{},\"sockets\":[", js(request_id));
    for (i, s) in sockets.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            "{{\"id\":{},\"handshake\":{},\"rooms\":{},\"data\":{}}}",
            js(&s.id),
            s.handshake,
            serde_json::to_string(&s.rooms).unwrap_or_else(|_| "[]".into()),
            s.data
        ));
    }
    out.push_str("]}");
    out
}

/// A serverSideEmit acknowledgement: `{"type":6,"requestId":..,"data":..}`.
pub fn encode_server_side_ack(request_id: &str, data: &Json) -> String {
    format!(
        "{{\"type\":{},\"requestId\":{},\"data\":{}}}",
        request_type::SERVER_SIDE_EMIT,
        js(request_id),
        data
    )
}

/// A fetchSockets request of this node (REMOTE_FETCH, 5), JSON as the adapter writes it:
/// `{"uid":..,"requestId":..,"type":5,"opts":{"rooms":[..],"except":[..]}}`.
pub fn encode_fetch_request(uid: &str, request_id: &str, selector: &Selector) -> String {
    serde_json::json!({
        "uid": uid,
        "requestId": request_id,
        "type": request_type::REMOTE_FETCH,
        "opts": {"rooms": selector.rooms, "except": selector.except},
    })
    .to_string()
}

/// A serverSideEmit of this node (SERVER_SIDE_EMIT, 6): `{"uid":..,"type":6,"data":[event, ...args]}`, plus
/// `"requestId"` when acknowledgements are expected.
pub fn encode_server_side_emit(uid: &str, request_id: Option<&str>, data: &[Json]) -> String {
    let mut m = serde_json::Map::new();
    m.insert("uid".into(), Json::String(uid.to_owned()));
    if let Some(id) = request_id {
        m.insert("requestId".into(), Json::String(id.to_owned()));
    }
    m.insert("type".into(), Json::from(request_type::SERVER_SIDE_EMIT));
    m.insert("data".into(), Json::Array(data.to_vec()));
    Json::Object(m).to_string()
}

/// A message of a response channel as plain JSON (JSON when it starts with `{`, else MessagePack read with
/// [`msgpack_to_plain_json`]), with its `requestId`.
pub fn decode_response(bytes: &[u8]) -> Result<(String, Json), CodecError> {
    let j: Json = if bytes.first() == Some(&b'{') {
        serde_json::from_slice(bytes).map_err(|e| CodecError::Json(e.to_string()))?
    } else {
        msgpack_to_plain_json(&msgpack::decode(bytes)?)
    };
    let Some(id) = j.get("requestId").and_then(Json::as_str) else {
        return Err(CodecError::Shape("response without a string requestId"));
    };
    Ok((id.to_owned(), j))
}

/// How many clients a BROADCAST (7) reached here: `{"type":8,"requestId":..,"clientCount":n}`.
pub fn encode_client_count(request_id: &str, count: usize) -> String {
    format!(
        "{{\"type\":{},\"requestId\":{},\"clientCount\":{count}}}",
        request_type::BROADCAST_CLIENT_COUNT,
        js(request_id)
    )
}

/// One client's acknowledgement of a BROADCAST: MessagePack `{type: 9, requestId, packet}`.
pub fn encode_broadcast_ack(request_id: &str, packet: Value) -> Vec<u8> {
    msgpack::encode(&map(vec![
        ("type", Value::Int(request_type::BROADCAST_ACK)),
        ("requestId", Value::str(request_id)),
        ("packet", packet),
    ]))
}

/// `[event, ...args]` as a shardcast socket sends it: JSON arguments with binary placeholders plus attachments.
pub fn socket_event(data: &[Value]) -> Result<SocketEvent, CodecError> {
    let (name, args) = data
        .split_first()
        .ok_or(CodecError::Shape("no event name"))?;
    let name = name
        .as_str()
        .ok_or(CodecError::Shape("event name is not a string"))?
        .to_owned();
    let mut attachments = Vec::new();
    let args = Json::Array(
        args.iter()
            .map(|a| to_json(a, &mut Some(&mut attachments)))
            .collect(),
    );
    Ok(SocketEvent {
        name,
        args: args.to_string(),
        attachments,
    })
}

/// A MessagePack value as JSON without attachments (binary becomes an array of byte values, as `Buffer.toJSON`
/// would not; only serverSideEmit data takes this path, where shardcast's listeners see JSON).
pub fn msgpack_to_plain_json(v: &Value) -> Json {
    to_json(v, &mut None)
}

fn to_json(v: &Value, attachments: &mut Option<&mut Vec<Vec<u8>>>) -> Json {
    match v {
        Value::Nil => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::UInt(u) => Json::from(*u),
        Value::F64(x) => serde_json::Number::from_f64(*x).map_or(Json::Null, Json::Number),
        Value::Str(s) => Json::String(s.clone()),
        Value::Bin(b) => match attachments {
            Some(list) => {
                list.push(b.clone());
                serde_json::json!({"_placeholder": true, "num": list.len() - 1})
            }
            None => Json::Array(b.iter().map(|x| Json::from(*x)).collect()),
        },
        Value::Array(items) => Json::Array(items.iter().map(|i| to_json(i, attachments)).collect()),
        Value::Map(entries) => {
            let mut m = serde_json::Map::new();
            for (k, val) in entries {
                let key = match k {
                    Value::Str(s) => s.clone(),
                    other => match to_json(other, &mut None) {
                        Json::String(s) => s,
                        j => j.to_string(),
                    },
                };
                m.insert(key, to_json(val, attachments));
            }
            Json::Object(m)
        }
        Value::Ext(..) => match v.timestamp_ms() {
            Some(ms) => Json::String(iso8601(ms)),
            None => Json::Null,
        },
    }
}

/// JSON as MessagePack; `{"_placeholder":true,"num":N}` objects become `attachments[N]` as `bin`.
pub fn json_to_msgpack(j: &Json, attachments: &[Vec<u8>]) -> Value {
    match j {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => {
            if let Some(u) = n.as_u64() {
                Value::UInt(u)
            } else if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else {
                Value::F64(n.as_f64().unwrap_or(0.0))
            }
        }
        Json::String(s) => Value::Str(s.clone()),
        Json::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| json_to_msgpack(i, attachments))
                .collect(),
        ),
        Json::Object(m) => {
            if m.len() == 2
                && m.get("_placeholder") == Some(&Json::Bool(true))
                && let Some(b) = m
                    .get("num")
                    .and_then(Json::as_u64)
                    .and_then(|n| attachments.get(n as usize))
            {
                return Value::Bin(b.clone());
            }
            Value::Map(
                m.iter()
                    .map(|(k, v)| (Value::str(k.as_str()), json_to_msgpack(v, attachments)))
                    .collect(),
            )
        }
    }
}

/// `Date.prototype.toISOString` of `ms` milliseconds since the epoch.
pub fn iso8601(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let year = if (0..=9999).contains(&y) {
        format!("{y:04}")
    } else if y < 0 {
        format!("-{:06}", -y)
    } else {
        format!("+{y:06}")
    };
    format!(
        "{year}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::test_hex::{hex, unhex};
    use serde_json::json;

    #[test]
    fn channel_names_follow_the_adapter() {
        let c = Channels::new("socket.io", "/", "abc123");
        assert_eq!(c.broadcast, "socket.io#/#");
        assert_eq!(c.broadcast_pattern(), "socket.io#/#*");
        assert_eq!(c.request, "socket.io-request#/#");
        assert_eq!(c.response, "socket.io-response#/#");
        assert_eq!(c.specific_response, "socket.io-response#/#abc123#");
        assert_eq!(c.broadcast_channel(&["room1".into()]), "socket.io#/#room1#");
        assert_eq!(
            c.broadcast_channel(&["a".into(), "b".into()]),
            "socket.io#/#"
        );
        assert_eq!(c.broadcast_channel(&[]), "socket.io#/#");
    }

    /// The adapter's bytes for
    /// `encode(["abc123", {type: 2, data: ["ev", 1, -1, 300, 1.5, "é", Buffer.from([1, 2]), null, undefined,
    /// true, {a: undefined, b: 2}], nsp: "/"}, {rooms: ["r1"], except: [], flags: {}}])` (notepack.io 3.0.1).
    const NODE_BROADCAST: &str = "93a661626331323383a47479706502a4646174619ba2657601ffcd012ccb3ff8000000000000a2c3a9c4020102c0c0c381a16202a36e7370a12f83a5726f6f6d7391a27231a665786365707490a5666c61677380";

    #[test]
    fn a_node_broadcast_decodes_with_binary_and_undefined() {
        let b = decode_broadcast(&unhex(NODE_BROADCAST)).unwrap();
        assert_eq!(b.uid, "abc123");
        assert_eq!(b.nsp, "/");
        assert_eq!(b.selector.rooms, ["r1"]);
        assert!(b.selector.except.is_empty());
        let ev = socket_event(&b.data).unwrap();
        assert_eq!(ev.name, "ev");
        assert_eq!(
            ev.args,
            r#"[1,-1,300,1.5,"é",{"_placeholder":true,"num":0},null,null,true,{"b":2}]"#
        );
        assert_eq!(ev.attachments, vec![vec![1u8, 2]]);
    }

    #[test]
    fn our_broadcast_is_byte_for_byte_the_adapters() {
        let data = vec![
            Value::str("ev"),
            Value::UInt(1),
            Value::Int(-1),
            Value::UInt(300),
            Value::F64(1.5),
            Value::str("é"),
            Value::Bin(vec![1, 2]),
            Value::Nil,
            Value::Nil,
            Value::Bool(true),
            Value::Map(vec![(Value::str("b"), Value::UInt(2))]),
        ];
        let sel = Selector {
            rooms: vec!["r1".into()],
            except: vec![],
        };
        assert_eq!(
            hex(&encode_broadcast("abc123", "/", data, &sel)),
            NODE_BROADCAST
        );
    }

    #[test]
    fn json_arguments_round_trip_with_placeholders() {
        let args = json!(["realtime:resource", {"id": "1", "n": -5, "x": 0.25, "b": {"_placeholder": true, "num": 0}}]);
        let v = json_to_msgpack(&args, &[vec![9, 9]]);
        let Value::Array(items) = &v else { panic!() };
        assert_eq!(items[1].get("b"), Some(&Value::Bin(vec![9, 9])));
        let ev = socket_event(items).unwrap();
        assert_eq!(ev.name, "realtime:resource");
        assert_eq!(ev.attachments, vec![vec![9u8, 9]]);
        let back: Json = serde_json::from_str(&ev.args).unwrap();
        assert_eq!(
            back,
            json!([{"id": "1", "n": -5, "x": 0.25, "b": {"_placeholder": true, "num": 0}}])
        );
    }

    #[test]
    fn dates_become_iso_strings() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(iso8601(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
        let ev = socket_event(&[Value::str("d"), Value::timestamp(1500)]).unwrap();
        assert_eq!(ev.args, r#"["1970-01-01T00:00:01.500Z"]"#);
    }

    #[test]
    fn requests_decode_in_both_encodings() {
        let r = decode_request(
            br#"{"uid":"n1","requestId":"q1","type":5,"opts":{"rooms":["a"],"except":["b"]}}"#,
        )
        .unwrap();
        assert_eq!(r.uid.as_deref(), Some("n1"));
        assert_eq!(r.request_id.as_deref(), Some("q1"));
        assert_eq!(
            r.kind,
            RequestKind::Fetch {
                selector: Selector {
                    rooms: vec!["a".into()],
                    except: vec!["b".into()]
                }
            }
        );
        // The emitter's socketsJoin: no uid, no requestId; a numeric room.
        let r = decode_request(br#"{"type":2,"opts":{"rooms":[],"except":[]},"rooms":["x",7]}"#)
            .unwrap();
        assert_eq!(r.uid, None);
        assert_eq!(
            r.kind,
            RequestKind::Join {
                selector: Selector::default(),
                rooms: vec!["x".into(), "7".into()]
            }
        );
        let r = decode_request(
            br#"{"uid":"n1","type":4,"opts":{"rooms":["r"],"except":[]},"close":true}"#,
        )
        .unwrap();
        assert!(matches!(
            r.kind,
            RequestKind::Disconnect { close: true, .. }
        ));
        let r =
            decode_request(br#"{"uid":"n1","requestId":"q2","type":6,"data":["ping",1]}"#).unwrap();
        assert_eq!(
            r.kind,
            RequestKind::ServerSideEmit {
                data: vec![json!("ping"), json!(1)]
            }
        );
        assert_eq!(
            decode_request(br#"{"uid":"n1","requestId":"q3","type":1}"#)
                .unwrap()
                .kind,
            RequestKind::AllRooms
        );
        // BROADCAST (7) is MessagePack.
        let packet = map(vec![
            ("type", Value::Int(2)),
            ("data", Value::Array(vec![Value::str("hi"), Value::UInt(1)])),
            ("nsp", Value::str("/")),
        ]);
        let flags = map(vec![("timeout", Value::UInt(500))]);
        let req = msgpack::encode(&map(vec![
            ("uid", Value::str("n1")),
            ("requestId", Value::str("q4")),
            ("type", Value::Int(7)),
            ("packet", packet),
            (
                "opts",
                map(vec![
                    ("rooms", strs(&[])),
                    ("except", strs(&[])),
                    ("flags", flags),
                ]),
            ),
        ]));
        let r = decode_request(&req).unwrap();
        let RequestKind::Broadcast { data, flags, .. } = r.kind else {
            panic!()
        };
        assert_eq!(data, vec![Value::str("hi"), Value::UInt(1)]);
        assert_eq!(flags.get("timeout").and_then(Value::as_i64), Some(500));
    }

    #[test]
    fn wrong_shapes_are_errors() {
        for bad in [
            &b"{\"type\":99}"[..],
            b"{\"type\":5,\"opts\":3}",
            b"{\"type\":6,\"data\":[1]}",
            b"{not json",
            b"[1,2]",
            &[0xc1][..],
        ] {
            assert!(decode_request(bad).is_err(), "{bad:?}");
        }
        assert!(decode_broadcast(&msgpack::encode(&Value::Array(vec![Value::str("u")]))).is_err());
        assert!(decode_broadcast(b"not msgpack at all").is_err());
        let no_name = msgpack::encode(&Value::Array(vec![
            Value::str("u"),
            map(vec![
                ("type", Value::Int(2)),
                ("data", Value::Array(vec![Value::UInt(1)])),
            ]),
            Value::Map(vec![]),
        ]));
        assert!(decode_broadcast(&no_name).is_err());
    }

    #[test]
    fn responses_have_the_adapters_keys() {
        assert_eq!(
            encode_rooms_response("q", &["a".into()]),
            r#"{"requestId":"q","rooms":["a"]}"#
        );
        assert_eq!(encode_done_response("q"), r#"{"requestId":"q"}"#);
        assert_eq!(
            encode_client_count("q", 3),
            r#"{"type":8,"requestId":"q","clientCount":3}"#
        );
        assert_eq!(
            encode_server_side_ack("q", &json!("pong")),
            r#"{"type":6,"requestId":"q","data":"pong"}"#
        );
        let info = SocketInfo {
            id: "s1".into(),
            handshake: json!({"auth": {}}),
            rooms: vec!["s1".into(), "r".into()],
            data: json!({}),
        };
        assert_eq!(
            encode_fetch_response("q", &[info]),
            r#"{"requestId":"q","sockets":[{"id":"s1","handshake":{"auth":{}},"rooms":["s1","r"],"data":{}}]}"#
        );
        // {type: 9, requestId: "xyz", packet: "ok"} as notepack writes it.
        assert_eq!(
            hex(&encode_broadcast_ack("xyz", Value::str("ok"))),
            "83a47479706509a9726571756573744964a378797aa67061636b6574a26f6b"
        );
    }

    #[test]
    fn own_requests_read_back_as_the_adapter_reads_them() {
        let sel = Selector {
            rooms: vec!["r1".into()],
            except: vec!["sid9".into()],
        };
        let text = encode_fetch_request("abcdef", "q1", &sel);
        let j: Json = serde_json::from_str(&text).unwrap();
        assert_eq!(
            j,
            json!({"uid": "abcdef", "requestId": "q1", "type": 5, "opts": {"rooms": ["r1"], "except": ["sid9"]}})
        );
        let r = decode_request(text.as_bytes()).unwrap();
        assert_eq!(r.uid.as_deref(), Some("abcdef"));
        assert_eq!(r.request_id.as_deref(), Some("q1"));
        assert!(matches!(r.kind, RequestKind::Fetch { selector } if selector == sel));

        let data = [json!("ev"), json!(1), json!({"a": null})];
        let with_ack = encode_server_side_emit("abcdef", Some("q2"), &data);
        let j: Json = serde_json::from_str(&with_ack).unwrap();
        assert_eq!(
            j,
            json!({"uid": "abcdef", "requestId": "q2", "type": 6, "data": ["ev", 1, {"a": null}]})
        );
        let r = decode_request(with_ack.as_bytes()).unwrap();
        assert!(matches!(r.kind, RequestKind::ServerSideEmit { data: d } if d == data));
        let without: Json =
            serde_json::from_str(&encode_server_side_emit("abcdef", None, &data)).unwrap();
        assert!(without.get("requestId").is_none(), "{without}");
    }

    #[test]
    fn responses_are_read_as_json_or_messagepack() {
        let (id, j) = decode_response(br#"{"type":6,"requestId":"q","data":{"x":1}}"#).unwrap();
        assert_eq!((id.as_str(), &j["data"]), ("q", &json!({"x": 1})));
        let mp = encode_broadcast_ack("q3", Value::Array(vec![Value::Int(4)]));
        let (id, j) = decode_response(&mp).unwrap();
        assert_eq!((id.as_str(), &j["packet"]), ("q3", &json!([4])));
        assert!(decode_response(br#"{"type":6}"#).is_err());
        assert!(decode_response(b"{not json").is_err());
        assert!(decode_response(b"\xc1").is_err());
    }
}
