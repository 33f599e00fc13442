//! The five databases: document shapes (what a fresh document looks like) and the edits
//! a day of school activity makes to an existing one.

use crate::json::{Value, arr, dyn_obj, obj};
use crate::rng::Rng;
use crate::text::{self, TAGS, iso, iso_django, iso_millis, prose, tail_len, title};
use crate::world::{World, place};

/// Makes a document body (without `_id`/`_rev`) created at `created`, last changed at `modified`.
pub type GenFn = fn(&World, &mut Rng, i64, i64) -> Value;
/// Applies one day's edit to a body at time `now`.
pub type MutFn = fn(&World, &mut Rng, &mut Value, i64);

#[derive(Debug, Clone, Copy)]
pub struct Schema {
    pub name: &'static str,
    /// Documents at `--scale 1`.
    pub base_docs: usize,
    pub generate: GenFn,
    pub mutate: MutFn,
}

/// Ordered largest first (the worker pool takes them in this order).
pub const SCHEMAS: [Schema; 5] = [
    Schema {
        name: "course_progress",
        base_docs: 80_000,
        generate: gen_progress,
        mutate: mut_progress,
    },
    Schema {
        name: "forum",
        base_docs: 36_000,
        generate: gen_forum,
        mutate: mut_forum,
    },
    Schema {
        name: "grades_submissions",
        base_docs: 30_000,
        generate: gen_grades,
        mutate: mut_grades,
    },
    Schema {
        name: "user_profiles",
        base_docs: 40_000,
        generate: gen_profile,
        mutate: mut_profile,
    },
    Schema {
        name: "notes_bookmarks",
        base_docs: 45_000,
        generate: gen_notes,
        mutate: mut_notes,
    },
];

fn dj(rng: &mut Rng, ts: i64) -> Value {
    iso_django(ts, rng.range(0, 999_999)).into()
}

fn ms(rng: &mut Rng, ts: i64) -> Value {
    iso_millis(ts, rng.range(0, 999)).into()
}

fn cents(rng: &mut Rng, lo: i64, hi: i64) -> f64 {
    rng.range(lo, hi) as f64 / 100.0
}

// ---------------------------------------------------------------- user_profiles

fn enrollment(world: &World, rng: &mut Rng, ts: i64) -> Value {
    let c = world.course(rng);
    obj(vec![
        ("course_id", c.id.as_str().into()),
        (
            "mode",
            (*rng.pick(&["audit", "audit", "verified", "honor", "professional"])).into(),
        ),
        ("is_active", rng.chance(0.92).into()),
        ("created", dj(rng, ts)),
    ])
}

fn gen_profile(world: &World, rng: &mut Rng, created: i64, modified: i64) -> Value {
    let u = world.user(rng);
    let (city, country, tz, lang) = place(u);
    let created = created.min(u.joined.max(created - 30 * 86_400));
    let mut links = Vec::new();
    for _ in 0..rng.below(4) {
        let p = *rng.pick(&["twitter", "linkedin", "facebook", "github"]);
        links.push(obj(vec![
            ("platform", p.into()),
            (
                "social_link",
                format!("https://www.{p}.com/{}", u.username).into(),
            ),
        ]));
    }
    let enrollments = (0..rng.urange(1, 7))
        .map(|_| enrollment(world, rng, created))
        .collect();
    let goals_len = if rng.chance(0.35) {
        0
    } else {
        tail_len(rng, 20, 300)
    };
    let bio_len = if rng.chance(0.5) {
        0
    } else {
        tail_len(rng, 40, 500)
    };
    obj(vec![
        ("type", "user_profile".into()),
        ("user_id", u.id.into()),
        ("username", u.username.as_str().into()),
        ("email", u.email.as_str().into()),
        ("name", u.name.as_str().into()),
        ("is_active", rng.chance(0.97).into()),
        ("is_staff", rng.chance(0.01).into()),
        ("is_superuser", false.into()),
        ("date_joined", dj(rng, created)),
        ("last_login", dj(rng, modified)),
        (
            "profile",
            obj(vec![
                ("year_of_birth", u.year_of_birth.into()),
                ("gender", (*rng.pick(&["m", "f", "o", ""])).into()),
                (
                    "level_of_education",
                    (*rng.pick(&["p", "m", "b", "a", "hs", "jhs", "el", "none", "other", ""]))
                        .into(),
                ),
                ("country", country.into()),
                ("city", city.into()),
                ("language", lang.into()),
                ("goals", prose(rng, goals_len, false).into()),
                ("bio", prose(rng, bio_len, true).into()),
                (
                    "mailing_address",
                    if rng.chance(0.2) {
                        Value::from(format!(
                            "{} {} Street, {city}",
                            rng.range(1, 400),
                            text::title(rng)
                        ))
                    } else {
                        Value::Null
                    },
                ),
                ("phone_number", Value::Null),
                (
                    "profile_image_uploaded_at",
                    if rng.chance(0.3) {
                        dj(rng, created + 3600)
                    } else {
                        Value::Null
                    },
                ),
                ("meta", obj(vec![("session_id", rng.hex(32).into())])),
            ]),
        ),
        (
            "preferences",
            obj(vec![
                ("pref-lang", lang.into()),
                ("time_zone", tz.into()),
                (
                    "account_privacy",
                    (*rng.pick(&["private", "all_users"])).into(),
                ),
                ("dark_mode", rng.chance(0.3).into()),
                (
                    "email_digest",
                    (*rng.pick(&["daily", "weekly", "none"])).into(),
                ),
                ("course_goals_reminders", rng.chance(0.6).into()),
            ]),
        ),
        ("social_links", arr(links)),
        ("enrollments", arr(enrollments)),
        (
            "signup",
            obj(vec![
                (
                    "source",
                    (*rng.pick(&["web", "web", "ios", "android", "sso-saml", "lti"])).into(),
                ),
                ("marketing_opt_in", rng.chance(0.4).into()),
                (
                    "tos_version",
                    (*rng.pick(&["2022-09", "2023-05", "2024-11"])).into(),
                ),
                (
                    "utm",
                    if rng.chance(0.3) {
                        obj(vec![
                            ("source", "newsletter".into()),
                            ("campaign", format!("spring-{}", rng.below(30)).into()),
                        ])
                    } else {
                        Value::Null
                    },
                ),
            ]),
        ),
    ])
}

fn mut_profile(world: &World, rng: &mut Rng, doc: &mut Value, now: i64) {
    doc.set("last_login", dj(rng, now));
    for _ in 0..rng.urange(1, 2) {
        match rng.below(6) {
            0 => {
                if let Some(a) = doc.arr_mut("enrollments") {
                    a.push(enrollment(world, rng, now));
                }
            }
            1 => {
                if let Some(Value::Obj(e)) = doc.arr_mut("enrollments").and_then(|a| a.first_mut())
                    && let Some((_, v)) = e.iter_mut().find(|(k, _)| k == "is_active")
                {
                    *v = Value::Bool(!v.as_bool().unwrap_or(true));
                }
            }
            2 => {
                let len = tail_len(rng, 40, 500);
                if let Some(p) = doc.get_mut("profile") {
                    p.set("bio", prose(rng, len, true).into());
                }
            }
            3 => {
                let len = tail_len(rng, 20, 300);
                if let Some(p) = doc.get_mut("profile") {
                    p.set("goals", prose(rng, len, false).into());
                }
            }
            4 => {
                if let Some(p) = doc.get_mut("preferences") {
                    let cur = p.get("dark_mode").and_then(Value::as_bool).unwrap_or(false);
                    p.set("dark_mode", (!cur).into());
                    p.set(
                        "email_digest",
                        (*rng.pick(&["daily", "weekly", "none"])).into(),
                    );
                }
            }
            _ => {
                let (city, country, _, _) = *rng.pick(text::PLACES);
                if let Some(p) = doc.get_mut("profile") {
                    p.set("city", city.into());
                    p.set("country", country.into());
                }
            }
        }
    }
}

// ---------------------------------------------------------------- course_progress

fn problem_state(rng: &mut Rng, block: &str, modified: i64) -> Value {
    let parts = rng.urange(1, 4);
    let mut correct_map = Vec::new();
    let mut answers = Vec::new();
    let mut input_state = Vec::new();
    let mut earned = 0;
    for p in 0..parts {
        let key = format!("{}_{}_1", &block[block.len() - 32..], p + 2);
        let ok = rng.chance(0.65);
        earned += i64::from(ok);
        correct_map.push((
            key.clone(),
            obj(vec![
                (
                    "correctness",
                    if ok { "correct" } else { "incorrect" }.into(),
                ),
                ("npoints", Value::Null),
                (
                    "msg",
                    if rng.chance(0.1) {
                        Value::from(text::title(rng))
                    } else {
                        "".into()
                    },
                ),
                ("hint", "".into()),
                ("hintmode", Value::Null),
                ("queuestate", Value::Null),
                ("answervariable", Value::Null),
            ]),
        ));
        let ans: Value = match rng.below(4) {
            0 => format!("choice_{}", rng.below(5)).into(),
            1 => arr((0..rng.urange(1, 3))
                .map(|_| Value::from(format!("choice_{}", rng.below(6))))
                .collect()),
            2 => format!("{}", cents(rng, -10_000, 10_000)).into(),
            _ => {
                let len = rng.urange(5, 60);
                prose(rng, len, false).into()
            }
        };
        answers.push((key.clone(), ans));
        input_state.push((key, obj(vec![])));
    }
    let attempts = rng.range(1, 5);
    obj(vec![
        ("correct_map", dyn_obj(correct_map)),
        ("input_state", dyn_obj(input_state)),
        ("last_submission_time", iso(modified).into()),
        ("attempts", attempts.into()),
        ("seed", rng.range(1, 1000).into()),
        ("done", true.into()),
        ("student_answers", dyn_obj(answers)),
        (
            "score",
            obj(vec![
                ("raw_earned", earned.into()),
                ("raw_possible", i64::try_from(parts).unwrap_or(1).into()),
            ]),
        ),
        ("has_saved_answers", false.into()),
    ])
}

fn hms(secs: i64) -> String {
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

fn video_state(rng: &mut Rng, modified: i64) -> Value {
    let len = rng.range(120, 1800);
    let mut segs = Vec::new();
    let mut t = 0;
    while t < len && segs.len() < 40 {
        let a = t + rng.range(0, 60);
        let b = a + rng.range(20, 400);
        segs.push(arr(vec![a.into(), b.min(len).into()]));
        t = b;
        if rng.chance(0.25) {
            break;
        }
    }
    obj(vec![
        ("saved_video_position", hms(rng.range(0, len)).into()),
        (
            "speed",
            (*rng.pick(&[1.0, 1.0, 1.25, 1.5, 2.0, 0.75])).into(),
        ),
        ("youtube_is_available", rng.chance(0.9).into()),
        (
            "transcript_language",
            (*rng.pick(&["en", "en", "es", "fr"])).into(),
        ),
        ("transcript_download_format", "srt".into()),
        ("duration", len.into()),
        ("watched_segments", arr(segs)),
        ("last_watched", iso(modified).into()),
    ])
}

fn gen_progress(world: &World, rng: &mut Rng, created: i64, modified: i64) -> Value {
    let u = world.user(rng);
    let c = world.course(rng);
    let r = rng.below(100);
    let (module_type, block, state, grade, max_grade) = if r < 55 {
        let b = c.pick_block("problem", rng);
        let st = problem_state(rng, &b, modified);
        let possible = st
            .get("score")
            .and_then(|s| s.get("raw_possible"))
            .and_then(Value::as_f64)
            .unwrap_or(1.0);
        let earned = st
            .get("score")
            .and_then(|s| s.get("raw_earned"))
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        ("problem", b, st, Value::Num(earned), Value::Num(possible))
    } else if r < 82 {
        let b = c.pick_block("video", rng);
        (
            "video",
            b,
            video_state(rng, modified),
            Value::Null,
            Value::Null,
        )
    } else if r < 94 {
        let b = c.pick_block("sequential", rng);
        let n = rng.urange(1, 12);
        let visited: Vec<Value> = (0..rng.urange(1, n))
            .map(|_| Value::from(c.pick_block("vertical", rng)))
            .collect();
        let st = obj(vec![
            ("position", rng.range(1, 12).into()),
            ("visited_verticals", arr(visited)),
            ("completion", cents(rng, 0, 100).into()),
        ]);
        ("sequential", b, st, Value::Null, Value::Null)
    } else {
        let b = c.pick_block("openassessment", rng);
        let len = tail_len(rng, 200, 1500);
        let st = obj(vec![
            ("submission_uuid", rng.uuid().into()),
            ("has_saved", rng.chance(0.7).into()),
            (
                "saved_response",
                obj(vec![(
                    "parts",
                    arr(vec![obj(vec![("text", prose(rng, len, true).into())])]),
                )]),
            ),
            ("saved_files_descriptions", arr(vec![])),
            ("no_of_submission_attempts", rng.range(0, 2).into()),
        ]);
        ("openassessment", b, st, Value::Null, Value::Null)
    };
    obj(vec![
        ("type", "student_module".into()),
        ("module_type", module_type.into()),
        ("module_id", block.into()),
        ("student_id", u.id.into()),
        ("username", u.username.as_str().into()),
        ("course_id", c.id.as_str().into()),
        ("state", state),
        ("grade", grade),
        ("max_grade", max_grade),
        ("done", "na".into()),
        ("created", dj(rng, created)),
        ("modified", dj(rng, modified)),
    ])
}

fn mut_progress(_world: &World, rng: &mut Rng, doc: &mut Value, now: i64) {
    doc.set("modified", dj(rng, now));
    let kind = doc
        .get("module_type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let block = doc
        .get("module_id")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let Some(state) = doc.get_mut("state") else {
        return;
    };
    match kind.as_str() {
        "problem" => {
            let attempts = state.get("attempts").and_then(Value::as_i64).unwrap_or(0);
            let mut fresh = problem_state(rng, &block, now);
            fresh.set("attempts", (attempts + 1).into());
            let earned = fresh
                .get("score")
                .and_then(|s| s.get("raw_earned"))
                .cloned();
            *state = fresh;
            if let Some(e) = earned {
                doc.set("grade", Value::Num(e.as_f64().unwrap_or(0.0)));
            }
        }
        "video" => {
            let len = state.get("duration").and_then(Value::as_i64).unwrap_or(600);
            state.set("saved_video_position", hms(rng.range(0, len)).into());
            state.set("last_watched", iso(now).into());
            if let Some(a) = state.arr_mut("watched_segments") {
                let s = rng.range(0, len);
                a.push(arr(vec![
                    s.into(),
                    (s + rng.range(10, 300)).min(len).into(),
                ]));
            }
            if rng.chance(0.2) {
                state.set("speed", (*rng.pick(&[1.0, 1.25, 1.5, 2.0])).into());
            }
        }
        "sequential" => {
            state.set("position", rng.range(1, 12).into());
            state.set("completion", cents(rng, 0, 100).into());
            if let Some(a) = state.arr_mut("visited_verticals")
                && let Some(first) = a.first().cloned()
            {
                // another vertical of the same course: keep the prefix, new hash
                if let Some(s) = first.as_str() {
                    a.push(format!("{}{}", &s[..s.len() - 32], rng.hex(32)).into());
                }
            }
        }
        _ => {
            let len = tail_len(rng, 200, 1500);
            state.set(
                "saved_response",
                obj(vec![(
                    "parts",
                    arr(vec![obj(vec![("text", prose(rng, len, true).into())])]),
                )]),
            );
            state.set("has_saved", true.into());
        }
    }
}

// ---------------------------------------------------------------- forum

fn votes(world: &World, rng: &mut Rng) -> Value {
    let n = if rng.chance(0.6) {
        0
    } else {
        tail_len(rng, 1, 6)
    };
    let up: Vec<Value> = (0..n)
        .map(|_| Value::from(world.user(rng).id.to_string()))
        .collect();
    let n = i64::try_from(up.len()).unwrap_or(0);
    obj(vec![
        ("up", arr(up)),
        ("down", arr(vec![])),
        ("up_count", n.into()),
        ("down_count", 0i64.into()),
        ("count", n.into()),
        ("point", n.into()),
    ])
}

fn gen_forum(world: &World, rng: &mut Rng, created: i64, modified: i64) -> Value {
    let u = world.user(rng);
    let c = world.course(rng);
    let thread = rng.chance(0.3);
    let body_len = tail_len(rng, 60, 900);
    let mut f = vec![
        ("type", if thread { "thread" } else { "comment" }.into()),
        (
            "_type",
            if thread { "CommentThread" } else { "Comment" }.into(),
        ),
        ("course_id", c.id.as_str().into()),
        ("author_id", u.id.to_string().into()),
        ("author_username", u.username.as_str().into()),
        ("anonymous", rng.chance(0.03).into()),
        ("anonymous_to_peers", rng.chance(0.05).into()),
    ];
    if thread {
        f.push((
            "commentable_id",
            if rng.chance(0.3) {
                "course".into()
            } else {
                rng.hex(32).into()
            },
        ));
        f.push(("title", title(rng).into()));
        f.push((
            "thread_type",
            (*rng.pick(&["discussion", "question"])).into(),
        ));
        f.push(("closed", rng.chance(0.05).into()));
        f.push(("pinned", rng.chance(0.02).into()));
        f.push(("comment_count", rng.range(0, 25).into()));
        f.push(("last_activity_at", ms(rng, modified)));
        f.push((
            "group_id",
            if rng.chance(0.1) {
                Value::Int(rng.range(1, 9))
            } else {
                Value::Null
            },
        ));
    } else {
        f.push(("thread_id", rng.hex(32).into()));
        f.push((
            "parent_id",
            if rng.chance(0.4) {
                rng.hex(32).into()
            } else {
                Value::Null
            },
        ));
        f.push(("endorsed", rng.chance(0.08).into()));
        f.push(("child_count", rng.range(0, 4).into()));
        f.push(("depth", rng.range(0, 2).into()));
    }
    f.push(("body", prose(rng, body_len, true).into()));
    f.push(("votes", votes(world, rng)));
    f.push(("abuse_flaggers", arr(vec![])));
    f.push(("historical_abuse_flaggers", arr(vec![])));
    f.push(("at_position_list", arr(vec![])));
    f.push(("edit_history", arr(vec![])));
    f.push(("visible", true.into()));
    f.push(("context", "course".into()));
    f.push(("created_at", ms(rng, created)));
    f.push(("updated_at", ms(rng, modified)));
    obj(f)
}

fn mut_forum(world: &World, rng: &mut Rng, doc: &mut Value, now: i64) {
    doc.set("updated_at", ms(rng, now));
    if doc.get("last_activity_at").is_some() {
        doc.set("last_activity_at", ms(rng, now));
        doc.bump("comment_count", 1);
    }
    match rng.below(5) {
        0 | 1 => {
            let voter = world.user(rng).id.to_string();
            if let Some(v) = doc.get_mut("votes") {
                if let Some(a) = v.arr_mut("up") {
                    a.push(voter.into());
                }
                v.bump("up_count", 1);
                v.bump("count", 1);
                v.bump("point", 1);
            }
        }
        2 => {
            // the author edits the post: appends a note or rewrites it
            let editor = world.user(rng).username.clone();
            let reason = if rng.chance(0.5) {
                Value::Null
            } else {
                "typo".into()
            };
            let at = ms(rng, now);
            let mut body = doc
                .get("body")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            if rng.chance(0.6) {
                body.push_str("\n\nEDIT: ");
                let len = rng.urange(20, 300);
                body.push_str(&prose(rng, len, false));
            } else {
                let len = tail_len(rng, 60, 900);
                body = prose(rng, len, true);
            }
            doc.set("body", body.into());
            if let Some(h) = doc.arr_mut("edit_history") {
                h.push(obj(vec![
                    ("editor_username", editor.into()),
                    ("reason_code", reason),
                    ("created_at", at),
                ]));
            }
        }
        3 => {
            if let Some(e) = doc.get("endorsed").and_then(Value::as_bool) {
                doc.set("endorsed", (!e).into());
            } else {
                let closed = doc.get("closed").and_then(Value::as_bool).unwrap_or(false);
                doc.set("closed", (!closed).into());
            }
        }
        _ => {
            let flagger = world.user(rng).id.to_string();
            if let Some(a) = doc.arr_mut("abuse_flaggers") {
                a.push(flagger.into());
            }
        }
    }
}

// ---------------------------------------------------------------- grades_submissions

const CRITERIA: &[&str] = &[
    "Ideas",
    "Content",
    "Organization",
    "Clarity",
    "Evidence",
    "Style",
];
const OPTIONS: &[(&str, i64)] = &[("Poor", 0), ("Fair", 1), ("Good", 3), ("Excellent", 5)];

fn assessment(world: &World, rng: &mut Rng, ts: i64) -> Value {
    let mut parts = Vec::new();
    let mut earned = 0;
    for crit in &CRITERIA[..rng.urange(3, 5)] {
        let (opt, pts) = *rng.pick(OPTIONS);
        earned += pts;
        let fb_len = if rng.chance(0.5) {
            0
        } else {
            rng.urange(20, 240)
        };
        parts.push(obj(vec![
            ("criterion", (*crit).into()),
            ("option", opt.into()),
            ("points", pts.into()),
            ("feedback", prose(rng, fb_len, false).into()),
        ]));
    }
    let fb_len = tail_len(rng, 0, 400);
    obj(vec![
        ("scorer_id", world.user(rng).anon.as_str().into()),
        ("score_type", (*rng.pick(&["PE", "PE", "SE", "ST"])).into()),
        ("points_earned", earned.into()),
        ("points_possible", 25i64.into()),
        ("parts", arr(parts)),
        ("feedback", prose(rng, fb_len, true).into()),
        ("scored_at", dj(rng, ts)),
    ])
}

fn gen_grades(world: &World, rng: &mut Rng, created: i64, modified: i64) -> Value {
    let u = world.user(rng);
    let c = world.course(rng);
    let r = rng.below(100);
    if r < 45 {
        let len = tail_len(rng, 300, 2500);
        let n_assess = rng.below(4);
        let assessments: Vec<Value> = (0..n_assess)
            .map(|_| assessment(world, rng, modified))
            .collect();
        let status = match n_assess {
            0 => "peer",
            1 | 2 => "waiting",
            _ => "done",
        };
        obj(vec![
            ("type", "submission".into()),
            ("uuid", rng.uuid().into()),
            (
                "student_item",
                obj(vec![
                    ("student_id", u.anon.as_str().into()),
                    ("course_id", c.id.as_str().into()),
                    ("item_id", c.pick_block("openassessment", rng).into()),
                    ("item_type", "openassessment".into()),
                ]),
            ),
            ("attempt_number", rng.range(1, 2).into()),
            ("submitted_at", dj(rng, created)),
            ("created_at", dj(rng, created)),
            (
                "answer",
                obj(vec![
                    (
                        "parts",
                        arr(vec![obj(vec![("text", prose(rng, len, true).into())])]),
                    ),
                    ("file_keys", arr(vec![])),
                    ("files_descriptions", arr(vec![])),
                    ("files_names", arr(vec![])),
                ]),
            ),
            ("status", "A".into()),
            ("assessments", arr(assessments)),
            (
                "workflow",
                obj(vec![
                    ("status", status.into()),
                    ("status_changed", dj(rng, modified)),
                    ("course_id", c.id.as_str().into()),
                    (
                        "steps",
                        arr(["peer", "self"]
                            .iter()
                            .enumerate()
                            .map(|(i, s)| {
                                obj(vec![
                                    ("name", (*s).into()),
                                    ("order_num", i64::try_from(i).unwrap_or(0).into()),
                                    ("submitter_completed_at", Value::Null),
                                    ("assessment_completed_at", Value::Null),
                                ])
                            })
                            .collect()),
                    ),
                ]),
            ),
        ])
    } else if r < 85 {
        let n = rng.urange(3, 16);
        let mut blocks = Vec::new();
        let (mut earned, mut possible) = (0i64, 0i64);
        for _ in 0..n {
            let p = rng.range(1, 5);
            possible += p;
            earned += rng.range(0, p);
            blocks.push(obj(vec![
                ("locator", c.pick_block("problem", rng).into()),
                ("weight", 1.0.into()),
                ("graded", rng.chance(0.8).into()),
                ("raw_possible", (p as f64).into()),
            ]));
        }
        obj(vec![
            ("type", "persistent_subsection_grade".into()),
            ("user_id", u.id.into()),
            ("course_id", c.id.as_str().into()),
            ("usage_key", c.pick_block("sequential", rng).into()),
            ("subtree_edited_timestamp", {
                let back = 86_400 * rng.range(1, 90);
                dj(rng, created - back)
            }),
            ("course_version", rng.hex(24).into()),
            ("earned_all", (earned as f64).into()),
            ("possible_all", (possible as f64).into()),
            ("earned_graded", (earned as f64).into()),
            ("possible_graded", (possible as f64).into()),
            ("first_attempted", dj(rng, created)),
            (
                "visible_blocks",
                obj(vec![
                    ("version", 1i64.into()),
                    ("course_key", c.id.as_str().into()),
                    ("blocks", arr(blocks)),
                ]),
            ),
            ("override", Value::Null),
            ("created", dj(rng, created)),
            ("modified", dj(rng, modified)),
        ])
    } else {
        let pct = cents(rng, 0, 100);
        let breakdown = ["Homework", "Lab", "Midterm Exam", "Final Exam"]
            .iter()
            .map(|cat| {
                let p = cents(rng, 0, 100);
                obj(vec![
                    ("category", (*cat).into()),
                    ("percent", p.into()),
                    (
                        "detail",
                        format!(
                            "{cat} = {:.2}% of a possible {}%",
                            p * 25.0,
                            rng.range(10, 40)
                        )
                        .into(),
                    ),
                ])
            })
            .collect();
        obj(vec![
            ("type", "course_grade".into()),
            ("user_id", u.id.into()),
            ("course_id", c.id.as_str().into()),
            ("course_edited_timestamp", {
                let back = 86_400 * rng.range(1, 90);
                dj(rng, created - back)
            }),
            ("course_version", rng.hex(24).into()),
            ("grading_policy_hash", rng.hex(40).into()),
            ("percent_grade", pct.into()),
            ("letter_grade", if pct >= 0.5 { "Pass" } else { "" }.into()),
            (
                "passed_timestamp",
                if pct >= 0.5 {
                    dj(rng, modified)
                } else {
                    Value::Null
                },
            ),
            ("grade_breakdown", arr(breakdown)),
            ("created", dj(rng, created)),
            ("modified", dj(rng, modified)),
        ])
    }
}

fn mut_grades(world: &World, rng: &mut Rng, doc: &mut Value, now: i64) {
    let kind = doc
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    match kind.as_str() {
        "submission" => {
            let a = assessment(world, rng, now);
            let n = doc.arr_mut("assessments").map_or(0, |v| {
                v.push(a);
                v.len()
            });
            let st = if n >= 3 { "done" } else { "waiting" };
            let changed = dj(rng, now);
            if let Some(w) = doc.get_mut("workflow") {
                w.set("status", st.into());
                w.set("status_changed", changed);
            }
        }
        "persistent_subsection_grade" => {
            let possible = doc
                .get("possible_all")
                .and_then(Value::as_f64)
                .unwrap_or(1.0);
            let earned = (rng.f64() * possible * 4.0).floor() / 4.0;
            doc.set("earned_all", earned.into());
            doc.set("earned_graded", earned.into());
            doc.set("modified", dj(rng, now));
        }
        _ => {
            let pct = cents(rng, 0, 100);
            doc.set("percent_grade", pct.into());
            doc.set("letter_grade", if pct >= 0.5 { "Pass" } else { "" }.into());
            doc.set(
                "passed_timestamp",
                if pct >= 0.5 {
                    dj(rng, now)
                } else {
                    Value::Null
                },
            );
            doc.set("modified", dj(rng, now));
        }
    }
}

// ---------------------------------------------------------------- notes_bookmarks

fn gen_notes(world: &World, rng: &mut Rng, created: i64, modified: i64) -> Value {
    let u = world.user(rng);
    let c = world.course(rng);
    let (kind, block) = c.random_block(rng);
    if rng.chance(0.6) {
        let quote_len = rng.urange(15, 300);
        let text_len = if rng.chance(0.2) {
            0
        } else {
            tail_len(rng, 10, 500)
        };
        let p = rng.range(1, 12);
        let s = rng.range(0, 200);
        let tags: Vec<Value> = (0..rng.below(4))
            .map(|_| Value::from(*rng.pick(TAGS)))
            .collect();
        obj(vec![
            ("type", "note".into()),
            ("user", u.anon.as_str().into()),
            ("course_id", c.id.as_str().into()),
            ("usage_id", block.into()),
            ("quote", prose(rng, quote_len, false).into()),
            ("text", prose(rng, text_len, false).into()),
            (
                "ranges",
                arr(vec![obj(vec![
                    ("start", format!("/div[1]/p[{p}]").into()),
                    ("end", format!("/div[1]/p[{p}]").into()),
                    ("startOffset", s.into()),
                    ("endOffset", (s + rng.range(5, 200)).into()),
                ])]),
            ),
            ("tags", arr(tags)),
            ("created", dj(rng, created)),
            ("updated", dj(rng, modified)),
        ])
    } else {
        let path = (0..rng.urange(2, 3))
            .map(|_| {
                obj(vec![
                    ("display_name", title(rng).into()),
                    ("usage_key", c.block("chapter", &rng.hex(32)).into()),
                ])
            })
            .collect();
        obj(vec![
            ("type", "bookmark".into()),
            ("user", u.username.as_str().into()),
            ("course_id", c.id.as_str().into()),
            ("usage_key", block.into()),
            ("block_type", kind.into()),
            ("display_name", title(rng).into()),
            ("path", arr(path)),
            ("course_name", c.name.into()),
            ("created", dj(rng, created)),
        ])
    }
}

fn mut_notes(_world: &World, rng: &mut Rng, doc: &mut Value, now: i64) {
    if doc.get("type").and_then(Value::as_str) == Some("note") {
        doc.set("updated", dj(rng, now));
        if rng.chance(0.6) {
            let len = tail_len(rng, 10, 500);
            doc.set("text", prose(rng, len, false).into());
        }
        if let Some(t) = doc.arr_mut("tags") {
            if t.is_empty() || rng.chance(0.6) {
                t.push((*rng.pick(TAGS)).into());
            } else {
                t.pop();
            }
        }
    } else {
        doc.set("display_name", title(rng).into());
        if let Some(p) = doc.arr_mut("path")
            && let Some(Value::Obj(first)) = p.first_mut()
            && let Some((_, v)) = first.iter_mut().find(|(k, _)| k == "display_name")
        {
            *v = title(rng).into();
        }
    }
}
