//! What both binaries' runtime-control endpoints share: the actions, the bearer-token gate
//! (refusals counted and logged the same way) and the `weight=` parameter.

use http::StatusCode;

use super::token::Token;
use super::{Call, Reply};

/// A runtime-control request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Drain,
    Undrain,
    Weight,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Drain => "drain",
            Action::Undrain => "undrain",
            Action::Weight => "weight",
        }
    }
}

/// Lets the call through when its bearer token matches, answering with who asked (the
/// `ctl` client's user header, `-` if none). No token configured: control is off (403); a
/// missing or wrong token: 401, logged, and `count_refusal` gets the reason (each binary counts
/// it under its own metric name).
pub fn authorize<'a>(
    token: Option<&Token>,
    c: &'a Call<'_>,
    action: Action,
    count_refusal: impl FnOnce(&'static str),
) -> Result<&'a str, Reply> {
    let Some(token) = token else {
        return Err(Reply::text(StatusCode::FORBIDDEN, "runtime control is off: set admin.token_file in the config\n"));
    };
    let user = c.headers.get(super::client::USER_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("-");
    if let Err(denied) = token.check(c.headers) {
        count_refusal(denied.as_str());
        // A token guesser gets its line a second, not one per guess (all are counted).
        crate::warn_every_second!(peer = %c.peer, user, action = action.as_str(), reason = denied.as_str(), "admin: control request refused");
        return Err(Reply::text(StatusCode::UNAUTHORIZED, format!("unauthorized: {} bearer token\n", denied.as_str())));
    }
    Ok(user)
}

/// The `weight=` parameter: `1..=1000` overrides, `config` (None) goes back to the configured weight.
pub fn weight_param(c: &Call<'_>) -> Result<Option<u32>, Reply> {
    match c.param("weight")?.as_deref() {
        Some("config") => Ok(None),
        Some(w) => match w.parse::<u32>() {
            Ok(n @ 1..=1000) => Ok(Some(n)),
            _ => Err(Reply::text(StatusCode::BAD_REQUEST, format!("weight: `{w}` is not 1..=1000 or `config`\n"))),
        },
        None => Err(Reply::text(StatusCode::BAD_REQUEST, "missing weight=1..1000 or weight=config\n")),
    }
}

/// How a drain state reads in answers and events.
pub fn drain_word(drained: bool) -> String {
    if drained { "drained" } else { "serving" }.to_owned()
}
