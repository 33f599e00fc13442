//! Passwords out of command lines before they are stored or printed.
//!
//! A `--command` line is recorded in every signed manifest, which every
//! replica copies and anyone with read access can list. This removes the
//! usual ways a password rides on a command line: a URL's userinfo
//! (`postgresql://user:PASSWORD@host/db`) and `NAME=VALUE` words whose name
//! says password, secret or token (`PGPASSWORD=…`, `--password=…`, also
//! quoted: `PGPASSWORD='…'`), and curl's `-u`/`--user USER:PASSWORD`. It is a
//! best effort on words split at white space; the CLI warns whenever it
//! changed something, so the user moves the secret out of the line.

/// Words whose name (before `=`) contains one of these hold a secret.
const SECRET_NAMES: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "secret",
    "token",
    "apikey",
];

/// Options whose next word is `USER:PASSWORD` (curl's).
const USER_OPTIONS: &[&str] = &["-u", "--user"];

/// Characters that end a shell word's value.
const SHELL_ENDS: &[char] = &[';', '&', '|', ')', '\'', '"', '`'];

/// What replaces a secret.
pub const HIDDEN: &str = "***";

/// The command line with secrets replaced by `***`; `None` if it held none.
pub fn redact_command(command: &str) -> Option<String> {
    let mut out = String::with_capacity(command.len());
    let mut changed = false;
    let mut rest = command;
    let mut previous = "";
    while !rest.is_empty() {
        let word_len = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let (word, after) = rest.split_at(word_len);
        let redacted = if USER_OPTIONS.contains(&previous) {
            redact_after_colon(word)
        } else {
            redact_word(word)
        };
        previous = word;
        changed |= redacted.is_some();
        out.push_str(redacted.as_deref().unwrap_or(word));
        let space_len = after
            .find(|c: char| !c.is_whitespace())
            .unwrap_or(after.len());
        out.push_str(&after[..space_len]);
        rest = &after[space_len..];
    }
    changed.then_some(out)
}

fn redact_word(word: &str) -> Option<String> {
    if let Some(eq) = word.find('=') {
        let name = word[..eq].to_ascii_lowercase().replace(['-', '_'], "");
        // A quote opening the value stays; the value ends where the shell
        // would end the word.
        let start = eq + 1 + usize::from(word[eq + 1..].starts_with(['\'', '"']));
        let value = &word[start..];
        let value_len = value.find(SHELL_ENDS).unwrap_or(value.len());
        if SECRET_NAMES.iter().any(|s| name.contains(s)) && value_len > 0 {
            return Some(format!("{}{HIDDEN}{}", &word[..start], &value[value_len..]));
        }
        if name == "user" {
            return redact_after_colon(word);
        }
    }
    redact_userinfo(word)
}

/// `USER:PASSWORD` (perhaps quoted, perhaps `--user=USER:PASSWORD`) →
/// `USER:***`; `None` without a password.
fn redact_after_colon(word: &str) -> Option<String> {
    let colon = word.find(':')?;
    let value = &word[colon + 1..];
    let value_len = value.find(SHELL_ENDS).unwrap_or(value.len());
    (value_len > 0).then(|| format!("{}{HIDDEN}{}", &word[..=colon], &value[value_len..]))
}

/// `scheme://user:password@host…` → `scheme://user:***@host…`.
fn redact_userinfo(word: &str) -> Option<String> {
    let authority = word.find("://")? + 3;
    let tail = &word[authority..];
    let end = tail.find(['/', '?', '#']).unwrap_or(tail.len());
    let at = tail[..end].rfind('@')?;
    let colon = tail[..at].find(':')?;
    if colon + 1 == at {
        return None;
    }
    let password_start = authority + colon + 1;
    let password_end = authority + at;
    Some(format!(
        "{}{HIDDEN}{}",
        &word[..password_start],
        &word[password_end..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_and_the_rest_kept() {
        let cases = [
            (
                "pg_dump postgresql://lms:s3cret@db:5432/lms",
                Some("pg_dump postgresql://lms:***@db:5432/lms"),
            ),
            (
                "PGPASSWORD=hunter2 pg_dump -h db lms",
                Some("PGPASSWORD=*** pg_dump -h db lms"),
            ),
            (
                "mysqldump --password=x  --all-databases",
                Some("mysqldump --password=***  --all-databases"),
            ),
            (
                "mongodump --uri='mongodb://root:p%40ss@m/?authSource=admin' --archive",
                Some("mongodump --uri='mongodb://root:***@m/?authSource=admin' --archive"),
            ),
            ("redis-cli -a --rdb -", None),
            ("pg_dump --password lms", None),
            ("curl https://user@host/x", None),
            ("curl https://host/a:b@c", None),
            (
                "AWS_SECRET_ACCESS_KEY=abc aws s3 cp",
                Some("AWS_SECRET_ACCESS_KEY=*** aws s3 cp"),
            ),
            ("echo a=b", None),
            ("PGPASSWORD=x;pg_dump", Some("PGPASSWORD=***;pg_dump")),
            ("", None),
        ];
        for (input, expected) in cases {
            assert_eq!(redact_command(input).as_deref(), expected, "{input}");
        }
    }
}
