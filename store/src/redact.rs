//! Passwords out of command lines before they are stored or printed.
//!
//! A `--command` line is recorded in every signed manifest, which every
//! replica copies and anyone with read access can list. This removes the
//! usual ways a password rides on a command line: a URL's userinfo
//! (`postgresql://user:PASSWORD@host/db`) and `NAME=VALUE` words whose name
//! says password, secret or token (`PGPASSWORD=…`, `--password=…`, also
//! quoted: `PGPASSWORD='…'`), curl's `-u`/`--user USER:PASSWORD`, the
//! password options of `redis-cli`, `mysqldump` and mongo's tools, and
//! `Authorization: Bearer …` headers. It is a
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

/// The command line as it may be stored or shown: secrets replaced.
pub fn redacted(command: &str) -> String {
    redact_command(command).unwrap_or_else(|| command.to_string())
}

/// The command line with secrets replaced by `***`; `None` if it held none.
pub fn redact_command(command: &str) -> Option<String> {
    let mut out = String::with_capacity(command.len());
    let mut changed = false;
    let mut rest = command;
    let mut previous = "";
    let (mut program, mut command_start) = ("", true);
    while !rest.is_empty() {
        let word_len = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let (word, after) = rest.split_at(word_len);
        if command_start && !is_assignment(word) {
            program = word.rsplit('/').next().unwrap_or(word);
        }
        let redacted = if USER_OPTIONS.contains(&previous) {
            redact_after_colon(word)
        } else if takes_secret(program, previous) && !word.starts_with('-') {
            hide_value(word, 0)
        } else if MYSQL.contains(&program) && word.starts_with("-p") {
            hide_value(word, 2)
        } else {
            redact_word(word)
        };
        previous = word;
        // The next word starts a command after a separator, or after an
        // assignment that itself started one (`PGPASSWORD=… pg_dump`).
        command_start = word.ends_with([';', '|', '&']) || (command_start && is_assignment(word));
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

/// Programs whose `-pPASSWORD` (attached) is a password.
const MYSQL: &[&str] = &[
    "mysql",
    "mysqldump",
    "mysqladmin",
    "mysqlpump",
    "mariadb",
    "mariadb-dump",
];

/// Whether the word after `previous` is a secret, for `program`: the value
/// of `redis-cli -a`/`--pass`, of mongo tools' `-p`/`--password`, or the
/// credentials after `Authorization: Bearer`/`Basic`.
fn takes_secret(program: &str, previous: &str) -> bool {
    let option = |options: &[&str]| options.contains(&previous);
    (program == "redis-cli" && option(&["-a", "--pass"]))
        || (program.starts_with("mongo") && option(&["-p", "--password"]))
        || previous.eq_ignore_ascii_case("bearer")
        || previous.eq_ignore_ascii_case("basic")
}

/// `NAME=VALUE` with a shell variable name: an assignment before a command.
fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

/// The word with its value from byte `start` hidden (up to where the shell
/// would end it); `None` when that value is empty.
fn hide_value(word: &str, start: usize) -> Option<String> {
    let value = word.get(start..)?;
    let value_len = value.find(SHELL_ENDS).unwrap_or(value.len());
    (value_len > 0).then(|| format!("{}{HIDDEN}{}", &word[..start], &value[value_len..]))
}

fn redact_word(word: &str) -> Option<String> {
    if let Some(eq) = word.find('=') {
        let name = word[..eq].to_ascii_lowercase().replace(['-', '_'], "");
        // A quote opening the value stays; the value ends where the shell
        // would end the word.
        let start = eq + 1 + usize::from(word[eq + 1..].starts_with(['\'', '"']));
        if SECRET_NAMES.iter().any(|s| name.contains(s))
            && let Some(hidden) = hide_value(word, start)
        {
            return Some(hidden);
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
    hide_value(word, word.find(':')? + 1)
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
            // Passwords as a program's own option (the adversarial review).
            (
                "redis-cli -h r -a s3cret --rdb -",
                Some("redis-cli -h r -a *** --rdb -"),
            ),
            (
                "redis-cli --pass s3cret --rdb -",
                Some("redis-cli --pass *** --rdb -"),
            ),
            (
                "mysqldump -uroot -ps3cret --all-databases",
                Some("mysqldump -uroot -p*** --all-databases"),
            ),
            ("mysqldump -p --all-databases", None),
            ("tar -cf - /srv | gzip -p4", None),
            (
                "/usr/bin/mongodump -u root -p s3cret --archive",
                Some("/usr/bin/mongodump -u root -p *** --archive"),
            ),
            (
                "true; redis-cli -a s3cret --rdb -",
                Some("true; redis-cli -a *** --rdb -"),
            ),
            ("ls -a x", None),
            (
                "REDISCLI_X=1 redis-cli -a pw",
                Some("REDISCLI_X=1 redis-cli -a ***"),
            ),
            (
                "curl -H 'Authorization: Bearer abc.def' https://h/x",
                Some("curl -H 'Authorization: Bearer ***' https://h/x"),
            ),
            ("", None),
        ];
        for (input, expected) in cases {
            assert_eq!(redact_command(input).as_deref(), expected, "{input}");
        }
    }
}
