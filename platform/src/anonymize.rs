//! Anonymised exports (`portico tenant export --anonymize`), for realistic staging tenants
//! with no one's personal data in them:
//!
//! - every user gets a consistent pseudonym (`user-<n>@anonymized.invalid`, `User <n>`,
//!   identities `subject-<n>`), numbered by user id;
//! - wherever a user's e-mail, display name or IdP subject appears — actor columns, approval
//!   payloads, ticket and comment text, document titles — it is replaced by the pseudonym;
//!   any other e-mail address in any text gets one of its own (`person-<n>@anonymized.invalid`);
//! - credentials, sessions and tokens are left out (their tables export empty: local
//!   accounts, API tokens, sessions, sign-in flows, invitations); SSO secrets are never
//!   exported;
//! - the audit log is left out too: its events are personal data bound into a hash chain
//!   that pseudonyms would break (an import starts a new chain with its `tenant_imported`
//!   event).
//!
//! Business data — sites, roles, documents and their content, ticket workflow — stays.

use std::collections::HashMap;

use serde_json::Value;

/// Tables whose rows an anonymised export leaves out.
pub const DROPPED: &[&str] = &[
    "local_credentials",
    "api_tokens",
    "sessions",
    "login_flows",
    "login_requests",
    "invitations",
    "idempotency_keys",
    "audit_events",
    "audit_values",
];

/// The pseudonyms of one export.
#[derive(Debug, Default)]
pub struct Pseudonyms {
    /// Known personal strings (lower-cased for e-mails) → their pseudonym, longest first when
    /// replacing.
    known: Vec<(String, String)>,
    /// Other e-mail addresses met in text → their pseudonym.
    others: HashMap<String, String>,
}

impl Pseudonyms {
    /// From the tenant's users (id, email, display name) and identities (user id, subject).
    pub fn new(users: &[(uuid::Uuid, String, String)], subjects: &[(uuid::Uuid, String)]) -> Self {
        let mut sorted: Vec<&(uuid::Uuid, String, String)> = users.iter().collect();
        sorted.sort_by_key(|u| u.0);
        let mut known = Vec::new();
        let mut number = HashMap::new();
        for (n, (id, email, name)) in sorted.into_iter().enumerate() {
            let n = n + 1;
            number.insert(*id, n);
            if !email.is_empty() {
                known.push((email.to_lowercase(), format!("user-{n}@anonymized.invalid")));
            }
            if name.trim().chars().count() >= 3 {
                known.push((name.trim().to_owned(), format!("User {n}")));
            }
            known.push((format!("user:{id}"), format!("user:{id}")));
        }
        for (user, subject) in subjects {
            let n = number.get(user).copied().unwrap_or(0);
            if subject.len() >= 3 && !known.iter().any(|(k, _)| k == &subject.to_lowercase()) {
                known.push((subject.clone(), format!("subject-{n}")));
            }
        }
        // Longer strings first, so an e-mail is replaced before a name inside it.
        known.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
        Self {
            known,
            others: HashMap::new(),
        }
    }

    /// One exported row (a JSON object), anonymised.
    pub fn row(&mut self, mut row: Value) -> Value {
        self.value(&mut row);
        row
    }

    fn value(&mut self, v: &mut Value) {
        match v {
            Value::String(s) => *s = self.text(s),
            Value::Array(items) => items.iter_mut().for_each(|i| self.value(i)),
            Value::Object(map) => {
                for (k, val) in map.iter_mut() {
                    // Addresses of people are personal data; other columns are walked as text.
                    if k == "client_ip" {
                        *val = Value::Null;
                    } else {
                        self.value(val);
                    }
                }
            }
            _ => {}
        }
    }

    /// A text with every known personal string and every e-mail address replaced.
    pub fn text(&mut self, s: &str) -> String {
        let mut out = s.to_owned();
        for (k, p) in &self.known {
            if k == p {
                continue;
            }
            // Names and subjects only as whole words ("Ann" is not in "Annual").
            out = replace_ci(&out, k, p, !k.contains('@'));
        }
        self.emails(&out)
    }

    /// Replaces e-mail addresses not already pseudonymous.
    fn emails(&mut self, s: &str) -> String {
        let bytes = s.as_bytes();
        let local = |b: u8| b.is_ascii_alphanumeric() || b"._%+-".contains(&b);
        let domain = |b: u8| b.is_ascii_alphanumeric() || b".-".contains(&b);
        let mut out = String::with_capacity(s.len());
        let mut i = 0;
        let mut last = 0;
        while i < bytes.len() {
            if bytes[i] == b'@' {
                let mut start = i;
                while start > 0 && local(bytes[start - 1]) {
                    start -= 1;
                }
                let mut end = i + 1;
                while end < bytes.len() && domain(bytes[end]) {
                    end += 1;
                }
                let host = s[i + 1..end].trim_end_matches(['.', '-']);
                let end = i + 1 + host.len();
                if start < i && host.contains('.') && start >= last {
                    let addr = &s[start..end];
                    if !addr.ends_with("@anonymized.invalid") {
                        let n = self.others.len() + 1;
                        let p = self
                            .others
                            .entry(addr.to_lowercase())
                            .or_insert_with(|| format!("person-{n}@anonymized.invalid"))
                            .clone();
                        out.push_str(&s[last..start]);
                        out.push_str(&p);
                        last = end;
                    }
                    i = end;
                    continue;
                }
            }
            i += 1;
        }
        out.push_str(&s[last..]);
        out
    }
}

/// `s` with every case-insensitive occurrence of `needle` replaced by `with` (with `words`,
/// only where it is not part of a longer word).
fn replace_ci(s: &str, needle: &str, with: &str, words: bool) -> String {
    if needle.is_empty() {
        return s.to_owned();
    }
    let hay = s.to_lowercase();
    let lower = needle.to_lowercase();
    // Lower-casing may change byte lengths outside ASCII: then match exactly only.
    if hay.len() != s.len() || lower.len() != needle.len() {
        return s.replace(needle, with);
    }
    let word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for (at, _) in hay.match_indices(&lower) {
        if at < last {
            continue;
        }
        let end = at + needle.len();
        if words && (word(s[..at].chars().next_back()) || word(s[end..].chars().next())) {
            continue;
        }
        out.push_str(&s[last..at]);
        out.push_str(with);
        last = at + needle.len();
    }
    out.push_str(&s[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn people_become_consistent_pseudonyms_everywhere() {
        let ann = uuid::Uuid::from_u128(1);
        let bob = uuid::Uuid::from_u128(2);
        let mut p = Pseudonyms::new(
            &[
                (bob, "Bob@Acme.example".into(), "Bob Builder".into()),
                (ann, "ann@acme.example".into(), "Ann Smith".into()),
            ],
            &[(bob, "00u1bob".into())],
        );
        let row = p.row(json!({
            "created_by": "bob@acme.example",
            "description": "Ann Smith says: call BOB@ACME.EXAMPLE or carl@vendor.example.com.",
            "payload": {"email": "ann@acme.example", "subject": "00u1bob"},
            "client_ip": "10.1.2.3",
            "title": "Invoice 2026-11",
        }));
        assert_eq!(row["created_by"], "user-2@anonymized.invalid");
        assert_eq!(
            row["description"],
            "User 1 says: call user-2@anonymized.invalid or person-1@anonymized.invalid."
        );
        assert_eq!(row["payload"]["email"], "user-1@anonymized.invalid");
        assert_eq!(row["payload"]["subject"], "subject-2");
        assert_eq!(row["client_ip"], Value::Null);
        assert_eq!(row["title"], "Invoice 2026-11");
        assert_eq!(
            p.text("Bob Builders Ltd, Ann Smithson"),
            "Bob Builders Ltd, Ann Smithson"
        );
        // The same unknown address gets the same pseudonym again.
        assert_eq!(
            p.text("carl@vendor.example.com"),
            "person-1@anonymized.invalid"
        );
        assert_eq!(p.text("no address @ all"), "no address @ all");
    }
}
