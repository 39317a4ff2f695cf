//! Command templates (`on_open`, `on_close`): split into arguments once, when the
//! config is loaded (shell quoting rules); `%IP%`, `%SEQUENCE%` and `%PORTS%` are
//! replaced inside each argument when the command runs, so no address or name can add
//! an argument or run anything.

use std::{fmt, path::Path};

/// What a template may contain, replaced when the command runs.
pub const PLACEHOLDERS: [&str; 3] = ["%IP%", "%SEQUENCE%", "%PORTS%"];

/// A command line split into arguments, placeholders still in them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    text: String,
    argv: Vec<String>,
}

impl Template {
    /// Splits `text` with shell quoting rules. The program must be an absolute path
    /// (there is no PATH lookup) with no placeholder in it.
    pub fn parse(text: &str) -> Result<Template, String> {
        if text.contains('\0') {
            return Err("contains a NUL byte".into());
        }
        let argv = shlex::split(text).ok_or_else(|| {
            format!("{text:?} cannot be split into arguments (an unclosed quote or a trailing backslash?)")
        })?;
        let Some(program) = argv.first() else {
            return Err("empty: give the absolute path of a program, then its arguments".into());
        };
        if PLACEHOLDERS.iter().any(|p| program.contains(p)) {
            return Err(format!(
                "{program:?}: the program must be a fixed path; placeholders go in its arguments"
            ));
        }
        if !Path::new(program).is_absolute() {
            return Err(format!(
                "{program:?} is not an absolute path (commands run without a shell, so without PATH)"
            ));
        }
        Ok(Template {
            text: text.into(),
            argv,
        })
    }

    pub fn program(&self) -> &str {
        &self.argv[0]
    }

    /// The arguments with the placeholders replaced: as many as the template has.
    pub fn argv(&self, vars: &Vars) -> Vec<String> {
        self.argv.iter().map(|a| substitute(a, vars)).collect()
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The values of the placeholders for one event.
pub struct Vars<'a> {
    pub ip: &'a str,
    pub sequence: &'a str,
    pub ports: &'a str,
}

/// Replaces the placeholders in one argument, in a single pass, so that a value that
/// happens to contain a placeholder is not expanded again.
pub fn substitute(arg: &str, vars: &Vars) -> String {
    let values = [vars.ip, vars.sequence, vars.ports];
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some((p, value)) = PLACEHOLDERS
            .iter()
            .zip(values)
            .find(|(p, _)| rest.starts_with(**p))
        {
            out.push_str(value);
            rest = &rest[p.len()..];
        } else {
            out.push('%');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}
