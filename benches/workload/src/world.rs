//! The shared "school": courses with their blocks, and the learners. Generated from the
//! seed alone, so every database refers to the same users and courses.

use crate::rng::Rng;
use crate::text::{self, FIRST_NAMES, LAST_NAMES, PLACES};

/// Day 1 of the workload is this instant (2025-03-03T00:00:00Z); day N is N-1 days later.
pub const DAY1: i64 = 1_740_960_000;
pub const DAY: i64 = 86_400;

const SUBJECTS: &[(&str, &str)] = &[
    ("CS101", "Introduction to Computer Science"),
    ("CS50P", "Programming with Python"),
    ("DS201", "Data Science Foundations"),
    ("ML301", "Machine Learning"),
    ("MATH120", "Calculus I"),
    ("MATH221", "Linear Algebra"),
    ("STAT110", "Probability"),
    ("PHYS101", "Mechanics"),
    ("PHYS202", "Electricity and Magnetism"),
    ("CHEM101", "General Chemistry"),
    ("BIO110", "Cell Biology"),
    ("ECON101", "Principles of Microeconomics"),
    ("ECON202", "Macroeconomics"),
    ("HIST150", "World History since 1500"),
    ("PHIL100", "Introduction to Ethics"),
    ("ENG105", "Academic Writing"),
    ("LANG110", "Spanish for Beginners"),
    ("ENV210", "Climate Change Science"),
    ("BUS230", "Financial Accounting"),
    ("DES120", "User Experience Design"),
];
const RUNS: &[&str] = &["2024_T1", "2024_T3", "2025_T1"];

#[derive(Debug)]
pub struct Course {
    /// `course-v1:CairnU+CS101+2025_T1`
    pub id: String,
    pub name: &'static str,
    /// Block hashes (32 hex) by kind.
    pub problems: Vec<String>,
    pub videos: Vec<String>,
    pub sequentials: Vec<String>,
    pub oras: Vec<String>,
    pub verticals: Vec<String>,
}

impl Course {
    /// `block-v1:CairnU+CS101+2025_T1+type@problem+block@<hex>`
    pub fn block(&self, kind: &str, hash: &str) -> String {
        let key = self.id.trim_start_matches("course-v1:");
        format!("block-v1:{key}+type@{kind}+block@{hash}")
    }

    /// A random block of `kind` (problem, video, sequential, openassessment, vertical).
    pub fn pick_block(&self, kind: &str, rng: &mut Rng) -> String {
        let list = match kind {
            "problem" => &self.problems,
            "video" => &self.videos,
            "sequential" => &self.sequentials,
            "openassessment" => &self.oras,
            _ => &self.verticals,
        };
        self.block(kind, &list[rng.below(list.len())])
    }

    pub fn random_block(&self, rng: &mut Rng) -> (&'static str, String) {
        let (kind, list): (&'static str, &Vec<String>) = match rng.below(10) {
            0..=4 => ("problem", &self.problems),
            5..=7 => ("video", &self.videos),
            8 => ("sequential", &self.sequentials),
            _ => ("vertical", &self.verticals),
        };
        let h = &list[rng.below(list.len())];
        (kind, self.block(kind, h))
    }
}

#[derive(Debug)]
pub struct User {
    pub id: u32,
    pub username: String,
    pub name: String,
    pub email: String,
    /// anonymous_user_id as used by ORA / notes
    pub anon: String,
    pub place: usize,
    pub year_of_birth: Option<i64>,
    pub joined: i64,
}

#[derive(Debug)]
pub struct World {
    pub courses: Vec<Course>,
    pub users: Vec<User>,
}

impl World {
    pub fn new(seed: u64, scale: f64) -> Self {
        let mut rng = Rng::derive(seed, &[0xC0_75E5]);
        let mut courses = Vec::new();
        for (i, (code, name)) in SUBJECTS.iter().enumerate() {
            for (j, run) in RUNS.iter().enumerate() {
                if (i + j) % 3 == 2 {
                    continue; // not every subject ran every term
                }
                let mut blocks = |n: usize| (0..n).map(|_| rng.hex(32)).collect::<Vec<_>>();
                courses.push(Course {
                    id: format!("course-v1:CairnU+{code}+{run}"),
                    name,
                    problems: blocks(120),
                    videos: blocks(60),
                    sequentials: blocks(24),
                    oras: blocks(6),
                    verticals: blocks(80),
                });
            }
        }
        let n_users = rng.round_prob(40_000.0 * scale).max(50);
        let mut users = Vec::with_capacity(n_users);
        for i in 0..n_users {
            let first = *rng.pick(FIRST_NAMES);
            let last = *rng.pick(LAST_NAMES);
            let base: String = format!("{first}{last}")
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect::<String>()
                .to_ascii_lowercase();
            let username = format!("{base}{}", rng.below(10_000));
            let domain = rng.pick(&[
                "gmail.com",
                "outlook.com",
                "cairnu.edu",
                "yahoo.fr",
                "proton.me",
                "web.de",
            ]);
            users.push(User {
                id: 1000 + u32::try_from(i).unwrap_or(u32::MAX - 1000),
                email: format!("{username}@{domain}"),
                username,
                name: format!("{first} {last}"),
                anon: rng.hex(32),
                place: rng.below(PLACES.len()),
                year_of_birth: if rng.chance(0.8) {
                    Some(rng.range(1950, 2009))
                } else {
                    None
                },
                joined: DAY1 - rng.range(30 * DAY, 900 * DAY),
            });
        }
        Self { courses, users }
    }

    /// A user, skewed so that some are much more active than others.
    pub fn user(&self, rng: &mut Rng) -> &User {
        let a = rng.below(self.users.len());
        let b = rng.below(self.users.len());
        &self.users[a.min(b)]
    }

    pub fn course(&self, rng: &mut Rng) -> &Course {
        let a = rng.below(self.courses.len());
        let b = rng.below(self.courses.len());
        &self.courses[a.min(b)]
    }
}

/// A timestamp during day `day` (1-based), in school hours mostly.
pub fn during_day(rng: &mut Rng, day: u32) -> i64 {
    let start = DAY1 + i64::from(day - 1) * DAY;
    start + rng.range(6 * 3600, 23 * 3600 + 3599)
}

pub fn place(u: &User) -> (&'static str, &'static str, &'static str, &'static str) {
    text::PLACES[u.place]
}
