//! A `tenant create` killed with SIGKILL at every step (before and after each step's work) is
//! finished by running the same command again, or undone by `--rollback`; both leave a
//! consistent catalog and nothing orphaned. The process pauses at a named point
//! (`PORTICO_TEST_PAUSE_AT`) and announces it; the test then kills it. No sleeps.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use crate::support::{Backend, TestEnv, tenant_id};

const POINTS: &[&str] = &[
    "reserved",
    "before:key",
    "after:key",
    "before:role",
    "after:role",
    "before:database",
    "after:database",
    "before:storage",
    "after:storage",
    "before:activate",
    "after:activate",
];

/// Runs `portico args…`, waits until it reports reaching `point`, and kills it with SIGKILL.
pub fn kill_at(env: &TestEnv, args: &[&str], point: &str) {
    let (mut child, _watchdog) = pause_at(env, args, point);
    child.kill().expect("SIGKILL"); // std sends SIGKILL on Unix
    let status = child.wait().expect("wait");
    assert!(!status.success());
}

/// Runs `portico args…` and returns it once it reports having stopped at `point` (it makes no
/// progress from there; kill it when done), with the watchdog that ends it if the test hangs.
pub fn pause_at(
    env: &TestEnv,
    args: &[&str],
    point: &str,
) -> (std::process::Child, crate::support::Watchdog) {
    let mut child = env
        .command()
        .args(args)
        .env("PORTICO_TEST_PAUSE_AT", point)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning portico");
    let watchdog = crate::support::Watchdog::arm(child.id(), crate::support::COMMAND_LIMIT);
    let stderr = child.stderr.take().expect("stderr");
    let mut seen = String::new();
    let mut reached = false;
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("reading stderr");
        if line == format!("PORTICO_PAUSED_AT {point}") {
            reached = true;
            break;
        }
        seen.push_str(&line);
        seen.push('\n');
    }
    assert!(
        reached,
        "portico {args:?} never reached {point}; stderr:\n{seen}"
    );
    (child, watchdog)
}

async fn crash_then(backend: Backend, resume: bool) {
    crash_env_then(TestEnv::new(backend).await, resume).await;
}

async fn crash_env_then(env: TestEnv, resume: bool) {
    for (i, point) in POINTS.iter().enumerate() {
        let slug = format!("crash-{i}");
        let args = ["tenant", "create", slug.as_str(), "--name", "Crash Test"];
        kill_at(&env, &args, point);
        let shown = env.json(&["tenant", "show", &slug, "--json"]);
        assert_eq!(
            shown["status"], "provisioning",
            "after a kill at {point}: {shown}"
        );
        let id = tenant_id(&shown);
        if resume {
            env.ok(&args);
            let t = env.assert_provisioned(&slug).await;
            assert_eq!(t["provisioning"]["status"], "succeeded");
            let steps = t["provisioning"]["steps"].as_array().expect("steps");
            assert!(
                steps.iter().all(|s| s["state"] == "done"),
                "{point}: {steps:?}"
            );
        } else {
            env.ok(&["tenant", "create", "--rollback", &slug]);
            env.assert_no_trace(id).await;
            // The slug is free again and a fresh create works.
            env.ok(&args);
            let t = env.assert_provisioned(&slug).await;
            assert_ne!(tenant_id(&t), id);
        }
    }
    env.cleanup().await;
}

#[tokio::test]
async fn killed_create_is_finished_by_rerun_file_local() {
    crash_then(Backend::FileLocal, true).await;
}

#[tokio::test]
async fn killed_create_is_undone_by_rollback_file_local() {
    crash_then(Backend::FileLocal, false).await;
}

#[tokio::test]
async fn killed_pooled_create_is_finished_by_rerun() {
    crash_env_then(TestEnv::pooled(Backend::FileLocal).await, true).await;
}

#[tokio::test]
async fn killed_pooled_create_is_undone_by_rollback() {
    crash_env_then(TestEnv::pooled(Backend::FileLocal).await, false).await;
}

#[tokio::test]
async fn killed_create_is_finished_by_rerun_s3_kms() {
    crash_then(Backend::S3Kms, true).await;
}

#[tokio::test]
async fn killed_create_is_undone_by_rollback_s3_kms() {
    crash_then(Backend::S3Kms, false).await;
}

/// A rollback killed half-way blocks a resume (which would meet half-destroyed resources) and
/// is finished by running the rollback again.
#[tokio::test]
async fn killed_rollback_is_finished_by_rerun() {
    let env = TestEnv::new(Backend::FileLocal).await;
    for (i, point) in [
        "rollback:marked",
        "rollback:storage",
        "rollback:database",
        "rollback:role",
        "rollback:key",
    ]
    .iter()
    .enumerate()
    {
        let slug = format!("undo-{i}");
        kill_at(&env, &["tenant", "create", &slug], "after:storage");
        let id = tenant_id(&env.json(&["tenant", "show", &slug, "--json"]));
        kill_at(&env, &["tenant", "create", "--rollback", &slug], point);
        env.run(&["tenant", "create", &slug])
            .assert_error("rollback");
        env.ok(&["tenant", "create", "--rollback", &slug]);
        env.assert_no_trace(id).await;
    }
    env.cleanup().await;
}

/// What KMS says about a key (id or alias).
async fn key_metadata(
    kms: &portico_core::keys::KmsKeyring,
    key: &str,
) -> aws_sdk_kms::types::KeyMetadata {
    kms.client()
        .describe_key()
        .key_id(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("DescribeKey {key}: {e}"))
        .key_metadata
        .expect("metadata")
}

/// KMS: a run killed between CreateKey and CreateAlias leaves a tagged key without alias; the
/// re-run adopts that key instead of creating a second one, and a rollback finds it by tag.
#[tokio::test]
async fn kms_key_without_alias_is_adopted_or_destroyed() {
    let env = TestEnv::new(Backend::S3Kms).await;
    let keyring = env.keyring().await;
    let portico_core::keys::Keyring::Kms(kms) = &keyring else {
        unreachable!()
    };
    for resume in [true, false] {
        let slug = if resume { "alias-resume" } else { "alias-undo" };
        kill_at(&env, &["tenant", "create", slug], "after:key");
        let id = tenant_id(&env.json(&["tenant", "show", slug, "--json"]));
        // Simulate the crash window before CreateAlias: remove the alias, keep the key.
        let alias = portico_core::keys::KmsKeyring::tenant_alias(id);
        let key_id = key_metadata(kms, &alias).await.key_id;
        kms.client()
            .delete_alias()
            .alias_name(&alias)
            .send()
            .await
            .expect("delete alias");
        if resume {
            env.ok(&["tenant", "create", slug]);
            let t = env.assert_provisioned(slug).await;
            // The re-run adopted the key the killed run created; no second key was made.
            assert_eq!(t["key_id"], key_id.as_str());
            assert_eq!(
                key_metadata(kms, &alias).await.key_id,
                key_id,
                "alias restored"
            );
        } else {
            env.ok(&["tenant", "create", "--rollback", slug]);
            env.assert_no_trace(id).await;
            assert_eq!(
                key_metadata(kms, &key_id).await.key_state,
                Some(aws_sdk_kms::types::KeyState::PendingDeletion)
            );
        }
    }
    env.cleanup().await;
}
