//! Vocabulary, names, free text of varied length, and timestamp formatting.

use crate::rng::Rng;

pub const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "was",
    "on",
    "be",
    "at",
    "by",
    "this",
    "have",
    "from",
    "or",
    "an",
    "but",
    "not",
    "are",
    "which",
    "you",
    "we",
    "they",
    "can",
    "if",
    "my",
    "so",
    "what",
    "about",
    "when",
    "there",
    "how",
    "would",
    "all",
    "function",
    "variable",
    "loop",
    "array",
    "matrix",
    "vector",
    "derivative",
    "integral",
    "theorem",
    "proof",
    "lemma",
    "hypothesis",
    "experiment",
    "sample",
    "population",
    "mean",
    "median",
    "variance",
    "regression",
    "gradient",
    "descent",
    "network",
    "layer",
    "neuron",
    "protein",
    "enzyme",
    "cell",
    "membrane",
    "photosynthesis",
    "ecosystem",
    "climate",
    "carbon",
    "energy",
    "momentum",
    "velocity",
    "acceleration",
    "force",
    "circuit",
    "voltage",
    "current",
    "resistance",
    "algorithm",
    "complexity",
    "recursion",
    "pointer",
    "memory",
    "compiler",
    "syntax",
    "semantics",
    "database",
    "query",
    "index",
    "transaction",
    "schema",
    "table",
    "history",
    "revolution",
    "empire",
    "treaty",
    "economy",
    "market",
    "inflation",
    "policy",
    "demand",
    "supply",
    "elasticity",
    "equilibrium",
    "culture",
    "language",
    "grammar",
    "essay",
    "argument",
    "evidence",
    "citation",
    "source",
    "lecture",
    "video",
    "quiz",
    "exam",
    "homework",
    "assignment",
    "deadline",
    "grade",
    "rubric",
    "feedback",
    "peer",
    "review",
    "week",
    "module",
    "unit",
    "section",
    "chapter",
    "problem",
    "question",
    "answer",
    "solution",
    "hint",
    "example",
    "exercise",
    "practice",
    "concept",
    "definition",
    "formula",
    "graph",
    "chart",
    "figure",
    "result",
    "error",
    "mistake",
    "confused",
    "understand",
    "explain",
    "think",
    "believe",
    "really",
    "actually",
    "maybe",
    "probably",
    "clearly",
    "simply",
    "quickly",
    "carefully",
    "interesting",
    "difficult",
    "easy",
    "important",
    "useful",
    "helpful",
    "great",
    "wrong",
    "right",
    "correct",
    "incorrect",
    "different",
    "similar",
    "same",
    "first",
    "second",
    "last",
    "next",
    "previous",
    "final",
    "initial",
    "general",
    "specific",
    "particular",
    "common",
    "instructor",
    "professor",
    "student",
    "classmate",
    "team",
    "group",
    "course",
    "certificate",
    "platform",
    "browser",
    "notebook",
    "python",
    "jupyter",
    "spreadsheet",
    "calculator",
    "submit",
    "submitted",
    "attempt",
    "attempts",
    "retry",
    "score",
    "points",
    "partial",
    "credit",
    "late",
    "extension",
    "discussion",
    "thread",
    "post",
    "reply",
    "comment",
    "thanks",
    "please",
    "help",
    "anyone",
    "someone",
    "everyone",
    "could",
    "should",
    "might",
    "must",
    "because",
    "therefore",
    "however",
    "although",
    "while",
    "since",
    "unless",
    "until",
    "between",
    "through",
    "during",
    "before",
    "after",
    "above",
    "below",
    "under",
    "over",
    "again",
    "further",
    "then",
    "once",
    "here",
    "where",
    "why",
    "more",
    "most",
    "other",
    "some",
    "such",
    "only",
    "own",
    "than",
    "too",
    "very",
    "just",
    "also",
    "well",
    "even",
    "still",
    "data",
    "model",
    "analysis",
    "method",
    "approach",
    "process",
    "system",
    "structure",
    "theory",
    "practice",
    "research",
    "study",
    "paper",
    "reading",
    "slides",
    "transcript",
    "subtitles",
    "audio",
    "download",
    "upload",
    "file",
    "link",
    "page",
    "step",
    "part",
];

pub const FIRST_NAMES: &[&str] = &[
    "Emma",
    "Liam",
    "Olivia",
    "Noah",
    "Ava",
    "Lucas",
    "Mia",
    "Ethan",
    "Sofia",
    "Mateo",
    "Chloé",
    "Hugo",
    "Léa",
    "Jonas",
    "Zoë",
    "Lukas",
    "Anna",
    "Ben",
    "Aisha",
    "Omar",
    "Fatima",
    "Yusuf",
    "Priya",
    "Arjun",
    "Ananya",
    "Rohan",
    "Mei",
    "Wei",
    "Hiroshi",
    "Yuki",
    "Sakura",
    "Min-jun",
    "Ji-woo",
    "José",
    "María",
    "Sebastián",
    "Valentina",
    "João",
    "Ana Lúcia",
    "Łukasz",
    "Zofia",
    "Søren",
    "Ingrid",
    "Astrid",
    "Kwame",
    "Amara",
    "Chidi",
    "Nia",
    "Thabo",
    "İlker",
    "Elif",
    "Dmitri",
    "Olga",
    "Nguyễn",
    "Linh",
    "Siddharth",
    "Grace",
    "Daniel",
    "Sarah",
    "David",
];

pub const LAST_NAMES: &[&str] = &[
    "Smith",
    "Johnson",
    "García",
    "Martínez",
    "Müller",
    "Schmidt",
    "Dubois",
    "Lefèvre",
    "Rossi",
    "Bianchi",
    "Nowak",
    "Kowalski",
    "Østergaard",
    "Andersson",
    "Yılmaz",
    "Kaya",
    "Ivanov",
    "Petrova",
    "Wang",
    "Li",
    "Zhang",
    "Chen",
    "Tanaka",
    "Suzuki",
    "Kim",
    "Park",
    "Nguyen",
    "Tran",
    "Patel",
    "Sharma",
    "Singh",
    "Okafor",
    "Mensah",
    "Adeyemi",
    "Silva",
    "Santos",
    "Oliveira",
    "Hernández",
    "López",
    "O'Brien",
    "Murphy",
    "Brown",
    "Taylor",
    "Wilson",
    "Cohen",
    "Levi",
    "Haddad",
    "Nasser",
    "Jansen",
    "de Vries",
    "Novák",
    "Horváth",
];

/// (city, ISO country, IANA zone, language)
pub const PLACES: &[(&str, &str, &str, &str)] = &[
    ("Boston", "US", "America/New_York", "en"),
    ("Austin", "US", "America/Chicago", "en"),
    ("Seattle", "US", "America/Los_Angeles", "en"),
    ("Toronto", "CA", "America/Toronto", "en"),
    ("Montréal", "CA", "America/Toronto", "fr"),
    ("México", "MX", "America/Mexico_City", "es"),
    ("Bogotá", "CO", "America/Bogota", "es"),
    ("São Paulo", "BR", "America/Sao_Paulo", "pt"),
    ("Madrid", "ES", "Europe/Madrid", "es"),
    ("Lyon", "FR", "Europe/Paris", "fr"),
    ("Paris", "FR", "Europe/Paris", "fr"),
    ("Berlin", "DE", "Europe/Berlin", "de"),
    ("München", "DE", "Europe/Berlin", "de"),
    ("Kraków", "PL", "Europe/Warsaw", "pl"),
    ("København", "DK", "Europe/Copenhagen", "da"),
    ("İstanbul", "TR", "Europe/Istanbul", "tr"),
    ("Cairo", "EG", "Africa/Cairo", "ar"),
    ("Lagos", "NG", "Africa/Lagos", "en"),
    ("Nairobi", "KE", "Africa/Nairobi", "en"),
    ("Accra", "GH", "Africa/Accra", "en"),
    ("Mumbai", "IN", "Asia/Kolkata", "en"),
    ("Bengaluru", "IN", "Asia/Kolkata", "en"),
    ("Hà Nội", "VN", "Asia/Ho_Chi_Minh", "vi"),
    ("Beijing", "CN", "Asia/Shanghai", "zh-cn"),
    ("Tokyo", "JP", "Asia/Tokyo", "ja"),
    ("Seoul", "KR", "Asia/Seoul", "ko"),
    ("Sydney", "AU", "Australia/Sydney", "en"),
];

pub const TAGS: &[&str] = &[
    "exam",
    "review",
    "important",
    "todo",
    "confusing",
    "formula",
    "definition",
    "week1",
    "week2",
    "week3",
    "midterm",
    "final",
    "lab",
    "reading",
    "video",
    "question",
    "idea",
];

fn capitalize_into(out: &mut String, w: &str) {
    let mut cs = w.chars();
    if let Some(c) = cs.next() {
        out.extend(c.to_uppercase());
        out.push_str(cs.as_str());
    }
}

/// One sentence of 4–18 words.
pub fn sentence(rng: &mut Rng, out: &mut String) {
    let n = rng.urange(4, 18);
    for i in 0..n {
        let w = *rng.pick(WORDS);
        if i == 0 {
            capitalize_into(out, w);
        } else {
            out.push(' ');
            out.push_str(w);
            if i + 1 < n && rng.chance(0.06) {
                out.push(',');
            }
        }
    }
    out.push(match rng.below(10) {
        0 => '?',
        1 => '!',
        _ => '.',
    });
}

pub fn title(rng: &mut Rng) -> String {
    let mut s = String::new();
    let n = rng.urange(3, 9);
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        let w = *rng.pick(WORDS);
        capitalize_into(&mut s, w);
    }
    if rng.chance(0.3) {
        s.push('?');
    }
    s
}

/// Prose of roughly `target` bytes; with `paragraphs`, split by blank lines and with the
/// occasional list or code block, like forum markdown.
pub fn prose(rng: &mut Rng, target: usize, paragraphs: bool) -> String {
    let mut s = String::with_capacity(target + 128);
    let mut in_par = 0;
    while s.len() < target {
        if !s.is_empty() {
            if paragraphs && in_par >= rng.urange(2, 6) {
                s.push_str("\n\n");
                in_par = 0;
                if rng.chance(0.08) {
                    code_block(rng, &mut s);
                    s.push_str("\n\n");
                } else if rng.chance(0.08) {
                    for _ in 0..rng.urange(2, 5) {
                        s.push_str("- ");
                        sentence(rng, &mut s);
                        s.push('\n');
                    }
                    s.push('\n');
                }
            } else {
                s.push(' ');
            }
        }
        sentence(rng, &mut s);
        in_par += 1;
    }
    s
}

fn code_block(rng: &mut Rng, s: &mut String) {
    s.push_str("```python\n");
    for i in 0..rng.urange(3, 12) {
        let a = rng.pick(WORDS);
        let b = rng.pick(WORDS);
        match i % 3 {
            0 => s.push_str(&format!("def {a}_{b}(x, n={}):\n", rng.below(100))),
            1 => s.push_str(&format!(
                "    return [{a} * x for {a} in range(n)]  # {b}\n"
            )),
            _ => s.push_str(&format!("print({a}_{b}({}))\n", rng.below(1000))),
        }
    }
    s.push_str("```");
}

/// A text length with a long tail: mostly in `lo..hi`, sometimes up to 4x, rarely 20x.
pub fn tail_len(rng: &mut Rng, lo: usize, hi: usize) -> usize {
    let r = rng.below(1000);
    if r < 900 {
        rng.urange(lo, hi)
    } else if r < 985 {
        rng.urange(hi, hi * 4)
    } else {
        rng.urange(hi * 4, hi * 20)
    }
}

/// `(year, month, day)` from days since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn ymdhms(ts: i64) -> (i64, i64, i64, i64, i64, i64) {
    let (y, mo, d) = civil_from_days(ts.div_euclid(86_400));
    let s = ts.rem_euclid(86_400);
    (y, mo, d, s / 3600, s / 60 % 60, s % 60)
}

/// `2025-03-03T10:11:12Z`
pub fn iso(ts: i64) -> String {
    let (y, mo, d, h, mi, s) = ymdhms(ts);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// Django style, `2025-03-03T10:11:12.123456+00:00`
pub fn iso_django(ts: i64, micros: i64) -> String {
    let (y, mo, d, h, mi, s) = ymdhms(ts);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{micros:06}+00:00")
}

/// Mongo/JS style, `2025-03-03T10:11:12.123Z`
pub fn iso_millis(ts: i64, millis: i64) -> String {
    let (y, mo, d, h, mi, s) = ymdhms(ts);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{millis:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_timestamps() {
        assert_eq!(iso(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso(1_740_960_000), "2025-03-03T00:00:00Z");
        assert_eq!(iso(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(
            iso_django(1_740_960_000 + 3723, 42),
            "2025-03-03T01:02:03.000042+00:00"
        );
        assert_eq!(iso_millis(1_740_960_000, 7), "2025-03-03T00:00:00.007Z");
    }

    #[test]
    fn prose_reaches_target() {
        let mut r = Rng::new(1);
        for t in [0, 10, 300, 5000] {
            let p = prose(&mut r, t, true);
            assert!(p.len() >= t);
            assert!(p.len() < t + 1200);
        }
    }
}
