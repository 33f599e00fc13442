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

/// A command given as words (run without a shell), each with its secrets
/// replaced by the rules of [`redact_command`]; a value runs to the end of
/// its word, since no shell cuts it. `None` if it held none.
pub fn redact_argv(words: &[String]) -> Option<Vec<String>> {
    let program = words
        .first()
        .map_or("", |w| w.rsplit('/').next().unwrap_or(w));
    let mut previous = "";
    let mut changed = false;
    let mut out = Vec::with_capacity(words.len());
    for word in words {
        let after = |at: usize| format!("{}{HIDDEN}", &word[..at]);
        let lower = word.to_ascii_lowercase();
        let redacted = if USER_OPTIONS.contains(&previous) {
            word.find(':').map(|c| after(c + 1))
        } else if takes_secret(program, previous) && !word.starts_with('-') {
            Some(HIDDEN.to_string())
        } else if MYSQL.contains(&program) && word.starts_with("-p") && word.len() > 2 {
            Some(after(2))
        } else if let Some(at) = ["bearer ", "basic "]
            .iter()
            .find_map(|s| lower.find(s).map(|i| i + s.len()))
        {
            // One word holding a whole header: `Authorization: Bearer …`.
            Some(after(at))
        } else if let Some(eq) = word.find('=')
            && secret_name(&word[..eq])
        {
            Some(after(eq + 1))
        } else if let Some(eq) = word.find('=')
            && word[..eq].eq_ignore_ascii_case("--user")
        {
            word[eq..].find(':').map(|c| after(eq + c + 1))
        } else {
            redact_userinfo(word)
        };
        changed |= redacted.is_some();
        out.push(redacted.unwrap_or_else(|| word.clone()));
        previous = word;
    }
    changed.then_some(out)
}

/// Whether a `NAME=` says its value is a secret.
fn secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase().replace(['-', '_'], "");
    SECRET_NAMES.iter().any(|s| name.contains(s))
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
        // A quote opening the value stays; the value ends where the shell
        // would end the word.
        let start = eq + 1 + usize::from(word[eq + 1..].starts_with(['\'', '"']));
        if secret_name(&word[..eq])
            && let Some(hidden) = hide_value(word, start)
        {
            return Some(hidden);
        }
        if word[..eq].to_ascii_lowercase().replace(['-', '_'], "") == "user" {
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
    fn words_run_without_a_shell_lose_their_whole_secret() {
        let words = |s: &[&str]| s.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        let cases: [(&[&str], Option<&[&str]>); 9] = [
            (
                &["mongodump", "--password", "abc!d'ef", "--archive"],
                Some(&["mongodump", "--password", "***", "--archive"]),
            ),
            (
                &["redis-cli", "-a", "p@ss word;x", "--rdb", "-"],
                Some(&["redis-cli", "-a", "***", "--rdb", "-"]),
            ),
            (
                &["mysqldump", "-ps3 cr'et", "db"],
                Some(&["mysqldump", "-p***", "db"]),
            ),
            (
                &["env", "PGPASSWORD=a b|c", "pg_dump"],
                Some(&["env", "PGPASSWORD=***", "pg_dump"]),
            ),
            (
                &["curl", "-u", "me:p w", "https://x"],
                Some(&["curl", "-u", "me:***", "https://x"]),
            ),
            (
                &["curl", "--user=me:p;w", "https://x"],
                Some(&["curl", "--user=me:***", "https://x"]),
            ),
            (
                &["curl", "-H", "Authorization: Bearer tok en", "u"],
                Some(&["curl", "-H", "Authorization: Bearer ***", "u"]),
            ),
            (
                &["pg_dump", "postgresql://u:p'w@db/lms"],
                Some(&["pg_dump", "postgresql://u:***@db/lms"]),
            ),
            (&["pg_dump", "-Fc", "openedx"], None),
        ];
        for (input, want) in cases {
            let want = want.map(words);
            assert_eq!(redact_argv(&words(input)), want, "{input:?}");
        }
    }

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
