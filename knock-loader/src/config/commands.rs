//! A sequence's `on_open` and `on_close`, and the `[commands]` table that bounds how
//! they run. The program is looked at here, so that `check` proves it runnable.

use std::os::unix::fs::PermissionsExt as _;

use anyhow::Result;
use serde::Deserialize;
use toml::Spanned;

use super::template::Template;
use super::{CommandLimits, parse::Source};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCommands {
    timeout: Option<Spanned<String>>,
    max_running: Option<Spanned<i64>>,
    max_queued: Option<Spanned<i64>>,
}

/// More at once is a fork bomb waiting for a knock flood, not a policy.
const MAX_RUNNING: i64 = 256;
const MAX_QUEUED: i64 = 65536;

pub(super) fn parse_commands(src: &Source, raw: Option<&RawCommands>) -> Result<CommandLimits> {
    let default = CommandLimits::default();
    let Some(raw) = raw else { return Ok(default) };
    let count = |value: &Option<Spanned<i64>>, key: &str, range: std::ops::RangeInclusive<i64>, default| {
        let Some(v) = value else { return Ok(default) };
        if !range.contains(v.get_ref()) {
            return Err(src.at(
                v,
                key,
                format!("{} is not from {} to {}", v.get_ref(), range.start(), range.end()),
            ));
        }
        Ok(*v.get_ref() as usize)
    };
    Ok(CommandLimits {
        timeout: src.duration(&raw.timeout, "commands.timeout", default.timeout)?,
        max_running: count(
            &raw.max_running,
            "commands.max_running",
            1..=MAX_RUNNING,
            default.max_running,
        )?,
        max_queued: count(
            &raw.max_queued,
            "commands.max_queued",
            0..=MAX_QUEUED,
            default.max_queued,
        )?,
    })
}

/// `on_open` or `on_close`: split into arguments, the program an executable file.
pub(super) fn parse_template(
    src: &Source,
    value: &Option<Spanned<String>>,
    key: &str,
) -> Result<Option<Template>> {
    let Some(value) = value else { return Ok(None) };
    let template = Template::parse(value.get_ref()).map_err(|e| src.at(value, key, e))?;
    let program = template.program();
    let meta = std::fs::metadata(program).map_err(|e| src.at(value, key, format!("{program}: {e}")))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(src.at(value, key, format!("{program} is not an executable file")));
    }
    Ok(Some(template))
}
