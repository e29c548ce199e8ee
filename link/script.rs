//! The linker script that places the functions of `link/hot-text.txt` first (used by
//! `build.rs`, and by the integration test `hot_text::` that links with it). Contract: one
//! input-section rule per pattern line, in the list's order, inside an output section
//! `.text.start_idle` inserted before `.text`; `#` comments, blank lines and lines that
//! cannot be a symbol pattern (white space, parentheses, quotes, braces, `;`: they would end
//! or break a linker-script token; mangled names are `[A-Za-z0-9_.$]`, plus `*`) are
//! skipped; `None` when no pattern is left (no script at all: the default layout).

use std::fmt::Write as _;

pub fn linker_script(list: &str) -> Option<String> {
    let mut rules = String::new();
    for line in list.lines().map(str::trim) {
        if line.is_empty()
            || line.starts_with('#')
            || line.contains(|c: char| c.is_whitespace() || "()\"';{}".contains(c))
        {
            continue;
        }
        // The function's own section, with LLVM's suffixes (`.llvm.<n>` from thin LTO's
        // promotion of a local function…) and in its `.text.unlikely.` form (`#[cold]`
        // functions, such as a `OnceLock`'s initializer: run once, at start).
        let _ = writeln!(
            rules,
            "    *(.text.{line} .text.{line}.* .text.unlikely.{line} .text.unlikely.{line}.*)"
        );
    }
    if rules.is_empty() {
        return None;
    }
    Some(format!(
        "/* Made from link/hot-text.txt: the code start-up and idle run, placed together. */\n\
         SECTIONS\n{{\n  .text.start_idle :\n  {{\n{rules}  }}\n}}\nINSERT BEFORE .text;\n"
    ))
}
