//! Splits a migration's SQL into statements, for engines that run (and record) them one at a
//! time: MySQL and MariaDB commit each DDL statement on its own, so progress is kept per
//! statement. Pure.
//!
//! A statement ends at `;` outside quotes (`'…'`, `"…"`, `` `…` ``, with `\` escapes and
//! doubled quotes) and comments (`-- …`, `# …`, `/* … */`). A line `DELIMITER $$` changes the
//! terminator for what follows (triggers and procedures hold `;` in their bodies), as in the
//! `mysql` client. Comments stay in the statement text; statements holding only comments and
//! blanks are dropped.

/// One statement of a migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The statement, without its terminator.
    pub sql: String,
    /// The line of the migration file it starts on (1-based).
    pub line: usize,
}

/// Returns the statements of `sql` in order.
pub fn split(sql: &str) -> Vec<Statement> {
    let mut statements = Vec::new();
    let mut delimiter = ";".to_owned();
    let bytes = sql.as_bytes();
    let mut index = 0;
    let mut line = 1;
    // The current statement: where it starts, its first line, whether it holds code.
    let mut start = 0;
    let mut start_line = 1;
    let mut has_code = false;
    let finish = |statements: &mut Vec<Statement>, text: &str, line: usize, has_code: bool| {
        if has_code {
            statements.push(Statement {
                sql: text.trim().to_owned(),
                line,
            });
        }
    };
    while index < bytes.len() {
        let rest = &sql[index..];
        // A DELIMITER directive stands on a line of its own, between statements.
        if !has_code
            && (index == 0 || bytes[index - 1] == b'\n')
            && rest.len() >= 10
            && rest.is_char_boundary(10)
            && rest[..10].eq_ignore_ascii_case("delimiter ")
        {
            let end = rest.find('\n').unwrap_or(rest.len());
            let new = rest[10..end].trim();
            if !new.is_empty() {
                delimiter = new.to_owned();
            }
            index += end;
            start = index;
            continue;
        }
        let byte = bytes[index];
        match byte {
            b'\n' => {
                line += 1;
                index += 1;
            }
            b'\'' | b'"' | b'`' => {
                has_code = true;
                index += 1;
                while index < bytes.len() {
                    let c = bytes[index];
                    if c == b'\\' && byte != b'`' {
                        // Skip the escaped character whole (it may take several bytes).
                        let escaped = sql[index + 1..].chars().next();
                        if escaped == Some('\n') {
                            line += 1;
                        }
                        index += 1 + escaped.map_or(0, char::len_utf8);
                        continue;
                    }
                    if c == b'\n' {
                        line += 1;
                    }
                    index += 1;
                    if c == byte {
                        if bytes.get(index) == Some(&byte) {
                            index += 1;
                            continue;
                        }
                        break;
                    }
                }
            }
            b'#' => index += rest.find('\n').unwrap_or(rest.len()),
            b'-' if rest.starts_with("--")
                && rest[2..].chars().next().is_none_or(|c| c.is_whitespace()) =>
            {
                index += rest.find('\n').unwrap_or(rest.len());
            }
            b'/' if rest.starts_with("/*") => {
                // `/*! … */` is code MySQL runs; a plain comment is not.
                if rest.starts_with("/*!") {
                    has_code = true;
                }
                let end = rest[2..].find("*/").map_or(rest.len(), |end| end + 4);
                line += rest[..end].matches('\n').count();
                index += end;
            }
            _ if rest.starts_with(delimiter.as_str()) => {
                finish(&mut statements, &sql[start..index], start_line, has_code);
                index += delimiter.len();
                start = index;
                has_code = false;
            }
            _ => {
                if !byte.is_ascii_whitespace() {
                    if !has_code {
                        // The statement starts at its first code, for the line it reports.
                        start_line = line;
                    }
                    has_code = true;
                }
                index += rest.chars().next().map_or(1, char::len_utf8);
            }
        }
        if !has_code {
            start_line = line;
        }
    }
    finish(&mut statements, &sql[start..], start_line, has_code);
    statements
}

/// An `ALTER TABLE` statement taken apart for an online schema change tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlterTable {
    /// The database it names, if the table is qualified.
    pub database: Option<String>,
    /// The table.
    pub table: String,
    /// What follows the table: `ADD COLUMN x int, ADD INDEX (x)`.
    pub alteration: String,
}

/// Returns the parts of an `ALTER TABLE` statement (leading comments allowed), or `None` for
/// any other statement.
pub fn alter_table(statement: &str) -> Option<AlterTable> {
    let mut rest = statement.trim_start();
    // Skip leading comments.
    loop {
        if rest.starts_with("--") || rest.starts_with('#') {
            rest = rest
                .split_once('\n')
                .map_or("", |(_, after)| after)
                .trim_start();
        } else if rest.starts_with("/*") && !rest.starts_with("/*!") {
            rest = rest
                .split_once("*/")
                .map_or("", |(_, after)| after)
                .trim_start();
        } else {
            break;
        }
    }
    let word = |text: &str| -> Option<(String, usize)> {
        let start = text.len() - text.trim_start().len();
        let end = text[start..]
            .find(char::is_whitespace)
            .map_or(text.len(), |end| start + end);
        Some((text[start..end].to_owned(), end))
    };
    let (alter, after) = word(rest)?;
    let (table, after_table) = word(&rest[after..])?;
    if !alter.eq_ignore_ascii_case("alter") || !table.eq_ignore_ascii_case("table") {
        return None;
    }
    let rest = rest[after + after_table..].trim_start();
    // The name: `a`.`b`, a.b, `a`, a; backticks may hold spaces and doubled backticks.
    let mut parts = Vec::new();
    let mut chars = rest.char_indices().peekable();
    let mut end = rest.len();
    let mut current = String::new();
    while let Some((index, c)) = chars.next() {
        match c {
            '`' => {
                while let Some((_, q)) = chars.next() {
                    if q == '`' {
                        if chars.peek().is_some_and(|(_, n)| *n == '`') {
                            chars.next();
                            current.push('`');
                            continue;
                        }
                        break;
                    }
                    current.push(q);
                }
            }
            '.' => parts.push(std::mem::take(&mut current)),
            c if c.is_whitespace() => {
                end = index;
                break;
            }
            c => current.push(c),
        }
    }
    parts.push(current);
    let alteration = rest[end..].trim().to_owned();
    if alteration.is_empty() || parts.iter().any(String::is_empty) || parts.len() > 2 {
        return None;
    }
    let table = parts.pop()?;
    Some(AlterTable {
        database: parts.pop(),
        table,
        alteration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqls(text: &str) -> Vec<String> {
        split(text).into_iter().map(|s| s.sql).collect()
    }

    #[test]
    fn splits_at_semicolons_outside_quotes_and_comments() {
        assert_eq!(
            sqls("CREATE TABLE a (x int);\nINSERT INTO a VALUES (1);\n"),
            vec!["CREATE TABLE a (x int)", "INSERT INTO a VALUES (1)"]
        );
        assert_eq!(
            sqls("INSERT INTO a VALUES ('x;y', \"p;q\", `c;d`, 'it''s; \\'; ok');SELECT 1"),
            vec![
                "INSERT INTO a VALUES ('x;y', \"p;q\", `c;d`, 'it''s; \\'; ok')",
                "SELECT 1"
            ]
        );
        assert_eq!(
            sqls("-- a; comment\nSELECT 1; # another; one\n/* block; */ SELECT 2;"),
            vec![
                "-- a; comment\nSELECT 1",
                "# another; one\n/* block; */ SELECT 2"
            ]
        );
        // `--` without a space is an operator, not a comment.
        assert_eq!(
            sqls("SELECT 1--1;SELECT 2"),
            vec!["SELECT 1--1", "SELECT 2"]
        );
    }

    #[test]
    fn drops_empty_and_comment_only_statements() {
        assert_eq!(sqls(""), Vec::<String>::new());
        assert_eq!(sqls(" ;\n;\n-- only a comment\n"), Vec::<String>::new());
        assert_eq!(sqls("SELECT 1;;\n-- trailing\n"), vec!["SELECT 1"]);
        assert_eq!(
            sqls("/*!40101 SET NAMES utf8 */;"),
            vec!["/*!40101 SET NAMES utf8 */"]
        );
    }

    #[test]
    fn reports_the_line_each_statement_starts_on() {
        let statements = split(
            "-- header\nCREATE TABLE a (\n  x int\n);\n\nINSERT INTO a\nVALUES ('multi\nline');\nSELECT 3;",
        );
        let lines: Vec<usize> = statements.iter().map(|s| s.line).collect();
        assert_eq!(lines, vec![2, 6, 9]);
    }

    #[test]
    fn a_delimiter_directive_changes_the_terminator() {
        let text = "CREATE TABLE t (x int);\nDELIMITER $$\nCREATE TRIGGER tr BEFORE INSERT ON t \
                    FOR EACH ROW BEGIN SET NEW.x = 1; END$$\nDELIMITER ;\nSELECT 1;";
        assert_eq!(
            sqls(text),
            vec![
                "CREATE TABLE t (x int)",
                "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW BEGIN SET NEW.x = 1; END",
                "SELECT 1"
            ]
        );
    }

    #[test]
    fn alter_table_statements_are_taken_apart() {
        assert_eq!(
            alter_table("-- note\nALTER TABLE users ADD COLUMN nick VARCHAR(20), ADD INDEX (nick)"),
            Some(AlterTable {
                database: None,
                table: "users".to_owned(),
                alteration: "ADD COLUMN nick VARCHAR(20), ADD INDEX (nick)".to_owned(),
            })
        );
        assert_eq!(
            alter_table("alter  table `app`.`my ``t`\n  DROP COLUMN x"),
            Some(AlterTable {
                database: Some("app".to_owned()),
                table: "my `t".to_owned(),
                alteration: "DROP COLUMN x".to_owned(),
            })
        );
        assert_eq!(alter_table("CREATE TABLE t (x int)"), None);
        assert_eq!(alter_table("ALTER TABLE t"), None);
        assert_eq!(alter_table("ALTER VIEW v AS SELECT 1"), None);
    }

    #[test]
    fn unterminated_quotes_and_comments_end_with_the_text() {
        assert_eq!(sqls("SELECT 'open; quote"), vec!["SELECT 'open; quote"]);
        assert_eq!(
            sqls("SELECT 1 /* open; comment"),
            vec!["SELECT 1 /* open; comment"]
        );
        assert_eq!(
            sqls("SELECT 'ends in a backslash \\"),
            vec!["SELECT 'ends in a backslash \\"]
        );
        assert_eq!(
            sqls("SELECT '\\é;'; SELECT 2"),
            vec!["SELECT '\\é;'", "SELECT 2"]
        );
    }
}
