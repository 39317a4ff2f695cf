//! `cargo xtask man`: the man pages, generated so that they never drift from what
//! they describe: `xknock(8)` and one page per command from the clap definitions
//! (clap_mangen), and `xknock.toml(5)` from docs/configuration.md (Markdown read by
//! pulldown-cmark, written as roff).

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;
use pulldown_cmark::{CodeBlockKind, Event, HeadingLevel, Parser, Tag, TagEnd};

/// Writes every page into `dir`; returns their paths.
pub fn write_all(dir: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = vec![];
    let top = xknock::cli::Cli::command().name("xknock");
    for sub in top.get_subcommands().filter(|c| c.get_name() != "help") {
        let name = format!("xknock-{}", sub.get_name());
        let page = sub
            .clone()
            .name(name.clone())
            .bin_name(format!("xknock {}", sub.get_name()));
        written.push(render(clap_mangen::Man::new(page).section("8"), dir, &name)?);
    }
    written.push(render(clap_mangen::Man::new(top).section("8"), dir, "xknock")?);
    let docs = crate::root().join("docs/configuration.md");
    let markdown = fs::read_to_string(&docs).with_context(|| format!("cannot read {}", docs.display()))?;
    let path = dir.join("xknock.toml.5");
    fs::write(&path, config_page(&markdown))?;
    written.push(path);
    Ok(written)
}

fn render(man: clap_mangen::Man, dir: &Path, name: &str) -> Result<PathBuf> {
    let mut page = vec![];
    man.render(&mut page)?;
    let path = dir.join(format!("{name}.8"));
    fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// docs/configuration.md as `xknock.toml(5)`: its first heading is the page's
/// title, second-level headings are sections, deeper ones subsections.
pub fn config_page(markdown: &str) -> String {
    let mut out = String::from(
        ".TH XKNOCK.TOML 5 \"\" \"xknock\" \"File Formats\"\n.SH NAME\nxknock.toml \\- xknock's configuration file\n",
    );
    let mut text = String::new();
    let (mut code, mut lists) = (false, 0usize);
    for event in Parser::new(markdown) {
        match event {
            Event::End(TagEnd::Heading(level)) => {
                let title = std::mem::take(&mut text);
                match level {
                    HeadingLevel::H1 => out.push_str(".SH DESCRIPTION\n"),
                    HeadingLevel::H2 => writeln!(out, ".SH \"{}\"", title.to_uppercase()).unwrap_or(()),
                    _ => writeln!(out, ".SS \"{title}\"").unwrap_or(()),
                }
            }
            Event::Start(Tag::CodeBlock(CodeBlockKind::Fenced(_) | CodeBlockKind::Indented)) => {
                code = true;
                out.push_str(".PP\n.RS 4\n.nf\n");
            }
            Event::End(TagEnd::CodeBlock) => {
                code = false;
                for line in text.lines() {
                    writeln!(out, "{}", line_start(&escape(line))).unwrap_or(());
                }
                text.clear();
                out.push_str(".fi\n.RE\n");
            }
            Event::Start(Tag::List(_)) => lists += 1,
            Event::End(TagEnd::List(_)) => lists = lists.saturating_sub(1),
            Event::Start(Tag::Item) => out.push_str(".IP \\(bu 2\n"),
            Event::End(TagEnd::Paragraph | TagEnd::Item | TagEnd::TableRow | TagEnd::TableHead) => {
                flush(&mut out, &mut text, lists == 0);
            }
            Event::Start(Tag::TableCell) if !text.is_empty() => text.push_str(" \\(em "),
            Event::Start(Tag::Strong) => text.push_str("\\fB"),
            Event::End(TagEnd::Strong) => text.push_str("\\fR"),
            Event::Start(Tag::Emphasis) => text.push_str("\\fI"),
            Event::End(TagEnd::Emphasis) => text.push_str("\\fR"),
            Event::Code(c) => write!(text, "\\fB{}\\fR", escape(&c)).unwrap_or(()),
            Event::Text(t) if code => text.push_str(&t),
            Event::Text(t) => text.push_str(&escape(&t)),
            Event::SoftBreak | Event::HardBreak => text.push(' '),
            _ => {}
        }
    }
    out.push_str(".SH SEE ALSO\n\\fBxknock\\fR(8), \\fBxknock\\-check\\fR(8)\n");
    out
}

/// A paragraph (or list item, or table row) of running text.
fn flush(out: &mut String, text: &mut String, paragraph: bool) {
    let t = std::mem::take(text);
    let t = t.trim();
    if t.is_empty() {
        return;
    }
    if paragraph {
        out.push_str(".PP\n");
    }
    writeln!(out, "{}", line_start(t)).unwrap_or(());
}

/// roff's special characters in text: backslashes, and hyphens (which roff may
/// render as something else).
fn escape(s: &str) -> String {
    s.replace('\\', "\\e").replace('-', "\\-")
}

/// A line that starts with `.` or `'` would be a request: `\&` makes it text.
fn line_start(line: &str) -> String {
    if line.starts_with(['.', '\'']) {
        format!("\\&{line}")
    } else {
        line.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_becomes_roff_with_what_roff_would_misread_escaped() {
        let page = config_page(
            "# Configuration\n\nText with `open_for` and a-hyphen.\n\n## The file\n\n```toml\n.x = \"a\\b\"\n```\n\n- one\n- two\n",
        );
        for want in [
            ".SH DESCRIPTION",
            "Text with \\fBopen_for\\fR and a\\-hyphen.",
            ".SH \"THE FILE\"",
            "\\&.x = \"a\\eb\"",
            ".IP \\(bu 2\none",
        ] {
            assert!(page.contains(want), "{want:?} in:\n{page}");
        }
    }
}
