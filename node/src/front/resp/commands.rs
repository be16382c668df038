//! The Redis commands the port knows, each run through the same KV read, write and
//! remove as the HTTP KV API ([`MainService`]), so the two cannot drift: a `SET` is
//! an overwrite that invalidates the key's dependents and is acknowledged as a
//! `PUT` is, a `DEL` a purge of the key, acknowledged by every member.
//!
//! Where Redis and the KV API differ, the KV API's rules hold and the reply says
//! so: a value without `EX`/`PX` lives `default_ttl` (as a `PUT` without
//! `max-age`), and every TTL is clamped to `max_ttl`; `NX`/`XX` are evaluated on a
//! node on its own (in a cluster they are refused, as `If-Match` is); keys are
//! not empty and at most `max_key_size` long. Commands it does not know get
//! Redis's own `unknown command` error.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fanz_protocol::resp::{self, Command};
use fanz_protocol::{CacheKey, Entry, EntryMeta};

use super::Replies;
use crate::cache::Freshness;
use crate::front::kv::{KvRead, MainService, Refused};
use crate::front::write_order::Precondition;
use crate::metrics::{Metrics, RespCommand, RespLabels, RespResult};

/// Most arguments one command may carry (an `MGET` or `DEL` of 1 023 keys).
pub(super) const MAX_ARGS: usize = 1024;

/// What the connection does after a command.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// Read the next one.
    Continue,
    /// Close, once the replies are written (`QUIT`).
    Close,
}

/// What every connection of the port shares.
pub(super) struct Port {
    pub(super) service: Arc<MainService>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) max_key_size: usize,
    pub(super) access_log: bool,
}

/// A command's outcome, for its reply and its count.
type Outcome = Result<RespResult, CommandError>;

/// A command refused before or while it ran: its error reply.
#[derive(Debug)]
enum CommandError {
    /// `-ERR ...`: the command cannot succeed as sent.
    Err(String),
    /// `-TRYAGAIN ...`: the node cannot answer for it now; another node, or later,
    /// may.
    TryAgain(String),
}

impl From<Refused> for CommandError {
    fn from(refused: Refused) -> Self {
        let (status, reason) = refused.status_and_reason();
        if status == http::StatusCode::SERVICE_UNAVAILABLE {
            CommandError::TryAgain(reason.into_owned())
        } else {
            CommandError::Err(reason.into_owned())
        }
    }
}

impl Port {
    /// Runs one command and appends its reply.
    pub(super) async fn run(
        &self,
        command: Command,
        peer: SocketAddr,
        replies: &mut Replies,
    ) -> Next {
        let started = Instant::now();
        let (counted, outcome, next) = match KeyCommand::named(command.name()) {
            Some(key_command) => {
                let outcome = match key_command {
                    KeyCommand::Get => self.get(&command, replies).await,
                    KeyCommand::Mget => self.mget(&command, replies).await,
                    KeyCommand::Set => self.set(&command, replies).await,
                    KeyCommand::Del => self.del(&command, replies).await,
                    KeyCommand::Exists => self.exists(&command, replies).await,
                    KeyCommand::Ttl => self.ttl(&command, replies).await,
                    KeyCommand::SetEx => self.set_ex(&command, replies).await,
                    KeyCommand::SetNx => self.set_nx(&command, replies).await,
                };
                (key_command.counted(), outcome, Next::Continue)
            }
            None => connection_command(&command, replies),
        };
        let result = match outcome {
            Ok(result) => result,
            Err(CommandError::Err(why)) => {
                resp::error(&mut replies.out, &format!("ERR {why}"));
                RespResult::Error
            }
            Err(CommandError::TryAgain(why)) => {
                resp::error(&mut replies.out, &format!("TRYAGAIN {why}"));
                RespResult::Error
            }
        };
        self.metrics
            .resp_commands
            .get_or_create(&RespLabels {
                command: counted,
                result,
            })
            .inc();
        self.metrics
            .resp_command_seconds
            .observe(started.elapsed().as_secs_f64());
        if self.access_log {
            log_access(&command, peer, result, started);
        }
        next
    }

    /// The key named by a command's argument: not empty, within `max_key_size`.
    fn key(&self, raw: &[u8]) -> Result<CacheKey, CommandError> {
        if raw.is_empty() {
            return Err(CommandError::Err(
                "empty keys are not accepted (the KV API cannot name them)".into(),
            ));
        }
        if raw.len() > self.max_key_size {
            return Err(CommandError::Err(format!(
                "key of {} bytes is longer than max_key_size ({} bytes)",
                raw.len(),
                self.max_key_size
            )));
        }
        Ok(CacheKey::kv(raw))
    }

    /// A read of one key: its value, or `None` when it has none.
    async fn read(&self, raw: &[u8]) -> Result<Option<KvRead>, CommandError> {
        self.read_key(&self.key(raw)?).await
    }

    /// [`Self::read`] of a key already checked.
    async fn read_key(&self, key: &CacheKey) -> Result<Option<KvRead>, CommandError> {
        match self.service.read(key).await {
            KvRead::Unavailable(why) => Err(CommandError::TryAgain(why.into_owned())),
            KvRead::Missing(_) => Ok(None),
            found => Ok(Some(found)),
        }
    }

    /// `GET key`: the value, or nil.
    async fn get(&self, command: &Command, replies: &mut Replies) -> Outcome {
        let [_, key] = arity(command)?;
        let found = self.read(key).await?;
        Ok(match found.as_ref().and_then(KvRead::entry) {
            Some(entry) => {
                replies.bulk(&entry.body);
                RespResult::Ok
            }
            None => {
                resp::null(&mut replies.out);
                RespResult::Nil
            }
        })
    }

    /// `MGET key [key ...]`: each value or nil, in order. A key this node cannot
    /// answer for fails the whole command (a nil would say it has no value).
    async fn mget(&self, command: &Command, replies: &mut Replies) -> Outcome {
        let keys = at_least(command, 1)?;
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            found.push(self.read(key).await?);
        }
        resp::array_head(&mut replies.out, found.len());
        for read in &found {
            match read.as_ref().and_then(KvRead::entry) {
                Some(entry) => replies.bulk(&entry.body),
                None => resp::null(&mut replies.out),
            }
        }
        Ok(RespResult::Ok)
    }

    /// `EXISTS key [key ...]`: how many of the keys have a value (a key named twice
    /// counts twice, as in Redis).
    async fn exists(&self, command: &Command, replies: &mut Replies) -> Outcome {
        let keys = at_least(command, 1)?;
        let mut count = 0;
        for key in keys {
            count += i64::from(self.read(key).await?.is_some());
        }
        resp::integer(&mut replies.out, count);
        Ok(RespResult::Ok)
    }

    /// `TTL key` / `PTTL key`: the time the value stays fresh, in seconds or
    /// milliseconds; -2 when the key has no value. (Every value has one: there is
    /// no -1.)
    async fn ttl(&self, command: &Command, replies: &mut Replies) -> Outcome {
        let [name, key] = arity(command)?;
        let millis = name.eq_ignore_ascii_case(b"PTTL");
        let remaining_ms = match self.read(key).await? {
            Some(KvRead::Hit(hit, _)) => match hit.freshness {
                Freshness::Fresh { ttl_ms } => ttl_ms,
                Freshness::Stale { .. } => 0,
            },
            Some(KvRead::Copy(entry, age_secs, _)) => {
                entry.meta.ttl_ms.saturating_sub(age_secs * 1000)
            }
            // No value (`read` answers the rest as None or an error).
            _ => {
                resp::integer(&mut replies.out, -2);
                return Ok(RespResult::Nil);
            }
        };
        let remaining = if millis {
            remaining_ms
        } else {
            remaining_ms.div_ceil(1000)
        };
        resp::integer(
            &mut replies.out,
            i64::try_from(remaining).unwrap_or(i64::MAX),
        );
        Ok(RespResult::Ok)
    }

    /// `SET key value [EX seconds | PX milliseconds] [NX | XX]`: `OK`, or nil when
    /// `NX`/`XX` did not hold (nothing written).
    async fn set(&self, command: &Command, replies: &mut Replies) -> Outcome {
        let args = at_least(command, 2)?;
        let options = SetOptions::parse(&args[2..])?;
        let written = self
            .store(&args[0], &args[1], options.ttl, options.precondition)
            .await?;
        Ok(if written {
            resp::simple(&mut replies.out, "OK");
            RespResult::Ok
        } else {
            resp::null(&mut replies.out);
            RespResult::Nil
        })
    }

    /// `SETEX key seconds value` / `PSETEX key milliseconds value`: `SET` with `EX`
    /// or `PX`, as older clients send it.
    async fn set_ex(&self, command: &Command, replies: &mut Replies) -> Outcome {
        let [name, key, ttl, _] = arity(command)?;
        let ttl = parse_ttl(name.eq_ignore_ascii_case(b"SETEX"), Some(ttl))?;
        self.store(
            key,
            &command.args[3],
            Some(ttl),
            Precondition::Unconditional,
        )
        .await?;
        resp::simple(&mut replies.out, "OK");
        Ok(RespResult::Ok)
    }

    /// `SETNX key value`: 1 when it wrote the key (it had no value), else 0.
    async fn set_nx(&self, command: &Command, replies: &mut Replies) -> Outcome {
        let [_, key, _] = arity(command)?;
        let written = self
            .store(key, &command.args[2], None, Precondition::Absent)
            .await?;
        resp::integer(&mut replies.out, i64::from(written));
        Ok(if written {
            RespResult::Ok
        } else {
            RespResult::Nil
        })
    }

    /// Writes `value` under the key `raw` as a `PUT` would (`ttl`, or
    /// `default_ttl`): whether it was written (`false`: the precondition did not
    /// hold, nothing written).
    async fn store(
        &self,
        raw: &[u8],
        value: &Bytes,
        ttl: Option<Duration>,
        precondition: Precondition<'static>,
    ) -> Result<bool, CommandError> {
        let key = self.key(raw)?;
        let version = self.service.begin_write().await?;
        let meta = EntryMeta {
            version,
            born_ms: version.millis(),
            ..self.service.value_meta(ttl)
        };
        let entry = Entry {
            meta,
            body: value.clone(),
        };
        match self.service.write(key, entry, precondition).await {
            Ok(_) => Ok(true),
            Err(Refused::Precondition { .. }) => Ok(false),
            Err(refused) => Err(refused.into()),
        }
    }

    /// `DEL key [key ...]` (and `UNLINK`): purges each key on every member, and
    /// answers how many had a value as a read just before saw it.
    async fn del(&self, command: &Command, replies: &mut Replies) -> Outcome {
        // Every key checked before any is deleted: a bad one refuses the command.
        let keys = at_least(command, 1)?
            .iter()
            .map(|raw| self.key(raw))
            .collect::<Result<Vec<_>, _>>()?;
        let mut removed = 0;
        for (done, key) in keys.iter().enumerate() {
            // A key this node cannot answer for now counts as not there; it is
            // purged all the same.
            let had = self.read_key(key).await.ok().flatten().is_some();
            match self
                .service
                .remove(key.clone(), Precondition::Unconditional)
                .await
            {
                Ok((_, None)) => removed += i64::from(had),
                Ok((_, Some(report))) => {
                    return Err(CommandError::TryAgain(format!(
                        "deleted {done} of {} keys; the next is deleted here but not yet acknowledged by every member: {}",
                        keys.len(),
                        serde_json::to_string(&report).unwrap_or_default()
                    )))
                }
                Err(refused) => {
                    let (_, why) = refused.status_and_reason();
                    return Err(CommandError::TryAgain(format!(
                        "deleted {done} of {} keys, then: {why}",
                        keys.len()
                    )));
                }
            }
        }
        resp::integer(&mut replies.out, removed);
        Ok(RespResult::Ok)
    }
}

/// The commands on keys.
#[derive(Debug, Clone, Copy)]
enum KeyCommand {
    Get,
    Mget,
    Set,
    Del,
    Exists,
    Ttl,
    SetEx,
    SetNx,
}

impl KeyCommand {
    /// Names as Redis has them (matched without regard to case), `UNLINK` as `DEL`
    /// (a purge is already reclaimed in the background), `PTTL` as `TTL` and
    /// `PSETEX` as `SETEX`.
    const NAMES: [(&'static [u8], KeyCommand); 11] = [
        (b"GET", KeyCommand::Get),
        (b"SET", KeyCommand::Set),
        (b"MGET", KeyCommand::Mget),
        (b"DEL", KeyCommand::Del),
        (b"UNLINK", KeyCommand::Del),
        (b"EXISTS", KeyCommand::Exists),
        (b"TTL", KeyCommand::Ttl),
        (b"PTTL", KeyCommand::Ttl),
        (b"SETEX", KeyCommand::SetEx),
        (b"PSETEX", KeyCommand::SetEx),
        (b"SETNX", KeyCommand::SetNx),
    ];

    fn named(name: &[u8]) -> Option<KeyCommand> {
        Self::NAMES
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(name))
            .map(|(_, command)| *command)
    }

    /// How it is counted in `fanz_resp_commands_total` (reads as `get`).
    fn counted(self) -> RespCommand {
        match self {
            KeyCommand::Get | KeyCommand::Mget | KeyCommand::Ttl => RespCommand::Get,
            KeyCommand::Set | KeyCommand::SetEx | KeyCommand::SetNx => RespCommand::Set,
            KeyCommand::Del => RespCommand::Del,
            KeyCommand::Exists => RespCommand::Exists,
        }
    }
}

/// One JSON line per command on standard output (`access_log = "json"`), beside
/// the HTTP listeners' lines: the command's name and key (lossy UTF-8, cut at 256
/// bytes), never its value.
fn log_access(command: &Command, peer: SocketAddr, result: RespResult, started: Instant) {
    use std::io::Write;
    let shown = |arg: &Bytes| String::from_utf8_lossy(&arg[..arg.len().min(256)]).into_owned();
    let line = serde_json::json!({
        "listener": "resp",
        "ts_ms": crate::clock::now_ms(),
        "peer": peer.to_string(),
        "command": shown(&command.args[0]).to_ascii_uppercase(),
        "key": command.args.get(1).map(shown),
        "result": result.as_str(),
        "duration_us": started.elapsed().as_micros() as u64,
    });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}

/// `SET`'s options.
struct SetOptions {
    ttl: Option<Duration>,
    precondition: Precondition<'static>,
}

impl SetOptions {
    fn parse(args: &[Bytes]) -> Result<Self, CommandError> {
        let mut options = SetOptions {
            ttl: None,
            precondition: Precondition::Unconditional,
        };
        let mut args = args.iter();
        while let Some(option) = args.next() {
            let option = option.to_ascii_uppercase();
            match option.as_slice() {
                b"EX" | b"PX" if options.ttl.is_none() => {
                    options.ttl =
                        Some(parse_ttl(option == b"EX", args.next().map(|a| a.as_ref()))?);
                }
                b"NX" | b"XX" if !options.precondition.conditional() => {
                    options.precondition = if option == b"NX" {
                        Precondition::Absent
                    } else {
                        Precondition::Present
                    };
                }
                b"GET" | b"KEEPTTL" | b"EXAT" | b"PXAT" => {
                    return Err(CommandError::Err(format!(
                        "SET ... {} is not supported by fanz-node",
                        String::from_utf8_lossy(&option)
                    )))
                }
                _ => return Err(CommandError::Err("syntax error".into())),
            }
        }
        Ok(options)
    }
}

/// A TTL argument in seconds (`EX`, `SETEX`) or milliseconds: a positive whole
/// number, or Redis's errors.
fn parse_ttl(seconds: bool, arg: Option<&[u8]>) -> Result<Duration, CommandError> {
    let n = arg
        .and_then(|n| std::str::from_utf8(n).ok()?.parse::<i64>().ok())
        .ok_or_else(|| CommandError::Err("value is not an integer or out of range".into()))?;
    if n <= 0 {
        return Err(CommandError::Err(
            "invalid expire time in 'set' command".into(),
        ));
    }
    let n = n.unsigned_abs();
    Ok(if seconds {
        Duration::from_secs(n)
    } else {
        Duration::from_millis(n)
    })
}

/// The arguments of a command that takes exactly `N - 1` after its name, or
/// Redis's arity error.
fn arity<const N: usize>(command: &Command) -> Result<[&[u8]; N], CommandError> {
    if command.args.len() != N {
        return Err(wrong_arity(command));
    }
    Ok(std::array::from_fn(|i| command.args[i].as_ref()))
}

/// The arguments after the name, at least `n` of them.
fn at_least(command: &Command, n: usize) -> Result<&[Bytes], CommandError> {
    if command.args.len() <= n {
        return Err(wrong_arity(command));
    }
    Ok(&command.args[1..])
}

fn wrong_arity(command: &Command) -> CommandError {
    CommandError::Err(format!(
        "wrong number of arguments for '{}' command",
        String::from_utf8_lossy(command.name()).to_ascii_lowercase()
    ))
}

/// The commands about the connection rather than keys, answered as Redis answers
/// them where the node has the same thing to say.
fn connection_command(command: &Command, replies: &mut Replies) -> (RespCommand, Outcome, Next) {
    let out = &mut replies.out;
    let name = command.name().to_ascii_uppercase();
    let args = &command.args[1..];
    let outcome = match name.as_slice() {
        b"PING" => match args {
            [] => { resp::simple(out, "PONG"); Ok(()) },
            [message] => { resp::bulk(out, message); Ok(()) },
            _ => Err(wrong_arity(command)),
        },
        b"ECHO" => match args {
            [message] => { resp::bulk(out, message); Ok(()) },
            _ => Err(wrong_arity(command)),
        },
        b"QUIT" => {
            resp::simple(out, "OK");
            return (RespCommand::Connection, Ok(RespResult::Ok), Next::Close);
        }
        b"SELECT" => match args {
            [db] if db.as_ref() == b"0" => { resp::simple(out, "OK"); Ok(()) },
            [_] => Err(CommandError::Err(
                "DB index is out of range (fanz-node has one keyspace, 0)".into(),
            )),
            _ => Err(wrong_arity(command)),
        },
        b"AUTH" => Err(CommandError::Err(
            "AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?".into(),
        )),
        b"HELLO" => match args.first().map(|v| v.as_ref()) {
            None | Some(b"2") => {
                let info: [(&str, &[u8]); 6] = [
                    ("server", b"fanz-node"),
                    ("version", env!("CARGO_PKG_VERSION").as_bytes()),
                    ("proto", b"2"),
                    ("id", b"0"),
                    ("mode", b"standalone"),
                    ("role", b"master"),
                ];
                resp::array_head(out, info.len() * 2 + 2);
                for (field, value) in info {
                    resp::bulk(out, field.as_bytes());
                    resp::bulk(out, value);
                }
                resp::bulk(out, b"modules");
                resp::array_head(out, 0);
                Ok(())
            }
            Some(_) => {
                resp::error(out, "NOPROTO fanz-node speaks RESP2 only");
                return (RespCommand::Connection, Ok(RespResult::Error), Next::Continue);
            }
        },
        b"CLIENT" => match args.first().map(|a| a.to_ascii_uppercase()).as_deref() {
            // Names and library facts clients announce on connecting: accepted,
            // not kept.
            Some(b"SETNAME" | b"SETINFO") => { resp::simple(out, "OK"); Ok(()) },
            Some(b"GETNAME") => { resp::null(out); Ok(()) },
            _ => Err(CommandError::Err(
                "fanz-node answers CLIENT SETNAME, SETINFO and GETNAME only".into(),
            )),
        },
        b"COMMAND" => { resp::array_head(out, 0); Ok(()) },
        _ => {
            let mut shown = String::from_utf8_lossy(command.name()).into_owned();
            shown.truncate(128);
            return (
                RespCommand::Unknown,
                Err(CommandError::Err(format!(
                    "unknown command '{shown}': fanz-node answers GET, MGET, SET, SETEX, PSETEX, SETNX, DEL, UNLINK, EXISTS, TTL, PTTL, PING, ECHO, SELECT, HELLO, CLIENT, COMMAND and QUIT"
                ))),
                Next::Continue,
            );
        }
    };
    (
        RespCommand::Connection,
        outcome.map(|()| RespResult::Ok),
        Next::Continue,
    )
}
