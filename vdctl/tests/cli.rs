//! `vdctl` from a shell's point of view: exit codes, stdout, stderr.

use std::process::{Command, Output};

fn vdctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vdctl")).args(args).env_remove("VD_KEYRING").output().expect("vdctl runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn keyring(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("ring.json");
    let out = vdctl(&["keygen", "--out", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    path.to_str().unwrap().to_owned()
}

#[test]
fn keygen_sign_verify_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let ring = keyring(&dir);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&ring).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the keyring file is private");
    }
    for carrier in ["query", "token"] {
        let out =
            vdctl(&["sign", "--keyring", &ring, "--path", "/videos/café.mp4", "--ttl", "5m", "--carrier", carrier]);
        assert!(out.status.success(), "{}", stderr(&out));
        let url = stdout(&out).trim().to_owned();
        assert!(url.starts_with("http://127.0.0.1:8080/videos/caf%C3%A9.mp4?"), "{url}");
        let out = vdctl(&["verify", "--keyring", &ring, &url]);
        assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
        assert!(stdout(&out).starts_with("valid: key k"), "{}", stdout(&out));
    }
}

#[test]
fn verify_names_the_reason_for_a_tampered_url() {
    let dir = tempfile::tempdir().unwrap();
    let ring = keyring(&dir);
    let out = vdctl(&["sign", "--keyring", &ring, "--path", "/videos/a.mp4", "--ttl", "5m"]);
    let url = stdout(&out).trim().to_owned();
    let cases = [
        (url.replace("/videos/a.mp4", "/videos/b.mp4"), "refused: bad_signature"),
        (url.replace("kid=k", "kid=x"), "refused: unknown_kid"),
        (url.replace("expires=", "expires=0"), "refused: malformed"),
        (url.split('?').next().unwrap().to_owned(), "refused: missing"),
    ];
    for (tampered, want) in cases {
        let out = vdctl(&["verify", "--keyring", &ring, &tampered]);
        assert_eq!(out.status.code(), Some(1), "{tampered}");
        assert!(stdout(&out).starts_with(want), "{tampered}: {}", stdout(&out));
    }
    let later =
        (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600).to_string();
    let out = vdctl(&["verify", "--keyring", &ring, "--now", &later, &url]);
    assert!(stdout(&out).starts_with("refused: expired"), "{}", stdout(&out));
}

#[test]
fn prefix_token_opens_the_folder_only() {
    let dir = tempfile::tempdir().unwrap();
    let ring = keyring(&dir);
    let out = vdctl(&["sign", "--keyring", &ring, "--path", "/videos/abc/master.m3u8", "--prefix", "--token-only"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out).trim().to_owned();
    assert!(token.starts_with("v1."));
    let ok = vdctl(&["verify", "--keyring", &ring, "--bearer", &token, "/videos/abc/720p/seg1.ts"]);
    assert_eq!(ok.status.code(), Some(0), "{}", stdout(&ok));
    let no = vdctl(&["verify", "--keyring", &ring, "--bearer", &token, "/videos/abd/seg1.ts"]);
    assert!(stdout(&no).starts_with("refused: wrong_scope"), "{}", stdout(&no));
}

#[test]
fn path_carrier_url_opens_relative_segments() {
    let dir = tempfile::tempdir().unwrap();
    let ring = keyring(&dir);
    let sign = |extra: &[&str]| {
        let mut args = vec!["sign", "--keyring", &ring, "--path", "/media/abc/master.m3u8", "--carrier", "path"];
        args.extend_from_slice(extra);
        vdctl(&args)
    };
    let out = sign(&["--prefix", "--route-prefix", "/media", "--base-url", "https://cdn.example"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let url = stdout(&out).trim().to_owned();
    assert!(url.starts_with("https://cdn.example/media/t/v1.") && url.ends_with("/abc/master.m3u8"), "{url}");
    // A segment URI relative to the playlist keeps the token segment.
    let segment = url.replace("/abc/master.m3u8", "/abc/720p/seg1.m4s");
    let ok = vdctl(&["verify", "--keyring", &ring, "--route-prefix", "/media", &segment]);
    assert_eq!(ok.status.code(), Some(0), "{}", stdout(&ok));
    let outside = url.replace("/abc/master.m3u8", "/abd/seg1.m4s");
    let no = vdctl(&["verify", "--keyring", &ring, "--route-prefix", "/media", &outside]);
    assert!(stdout(&no).starts_with("refused: wrong_scope"), "{}", stdout(&no));

    let no_prefix = sign(&["--route-prefix", "/media"]);
    assert_eq!(no_prefix.status.code(), Some(2));
    assert!(stderr(&no_prefix).contains("needs a prefix token"), "{}", stderr(&no_prefix));
    let wrong_route = sign(&["--prefix"]);
    assert!(stderr(&wrong_route).contains("not under the route prefix \"/videos\""), "{}", stderr(&wrong_route));
}

#[test]
fn ip_binding_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let ring = keyring(&dir);
    let out = vdctl(&["sign", "--keyring", &ring, "--path", "/v/a.mp4", "--ip", "203.0.113.9/24"]);
    let url = stdout(&out).trim().to_owned();
    assert!(url.contains("ip=203.0.113.0%2F24"), "the range is canonicalised: {url}");
    let inside = vdctl(&["verify", "--keyring", &ring, "--client-ip", "203.0.113.77", &url]);
    assert_eq!(inside.status.code(), Some(0));
    let outside = vdctl(&["verify", "--keyring", &ring, "--client-ip", "198.51.100.1", &url]);
    assert!(stdout(&outside).starts_with("refused: wrong_ip"));
}

#[test]
fn rotate_publishes_then_promotes() {
    let dir = tempfile::tempdir().unwrap();
    let ring = keyring(&dir);
    let before: serde_json::Value = serde_json::from_slice(&std::fs::read(&ring).unwrap()).unwrap();
    let first = before["keys"][0]["kid"].as_str().unwrap().to_owned();
    let out = vdctl(&["rotate", "--keyring", &ring, "--force"]);
    assert!(stdout(&out).contains("published pending key"), "{}", stdout(&out));
    let far = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600).to_string();
    let out = vdctl(&["rotate", "--keyring", &ring, "--now", &far]);
    assert!(stdout(&out).contains(&format!("{first} is retiring")), "{}", stdout(&out));
    let after: serde_json::Value = serde_json::from_slice(&std::fs::read(&ring).unwrap()).unwrap();
    let states: Vec<&str> = after["keys"].as_array().unwrap().iter().map(|k| k["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["retiring", "active"]);
    assert!(!stdout(&out).contains(after["keys"][1]["secret"].as_str().unwrap()), "secrets are never printed");
}

#[test]
fn errors_go_to_stderr_with_a_nonzero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let out = vdctl(&["sign", "--keyring", missing.to_str().unwrap(), "--path", "/a"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read keyring"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());

    let ring = keyring(&dir);
    let out = vdctl(&["sign", "--keyring", &ring, "--path", "/videos/../etc/passwd"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("'.' or '..' segment"), "{}", stderr(&out));

    let out = vdctl(&["keygen", "--out", &ring]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));

    std::fs::write(&ring, b"{\"version\":1,\"keys\":[]}").unwrap();
    let out = vdctl(&["sign", "--keyring", &ring, "--path", "/a"]);
    assert!(stderr(&out).contains("the keyring has no keys"), "{}", stderr(&out));
}

#[test]
fn a_starting_keyring_refuses_to_sign_until_its_key_is_promoted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ring.json");
    let ring = path.to_str().unwrap();
    let secret = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let doc = serde_json::json!({"version": 1, "keys": [
        {"kid": "k-new", "state": "pending", "secret": secret, "created_at": 1000, "activate_after": 4102444800u64}
    ]});
    std::fs::write(&path, doc.to_string()).unwrap();

    let out = vdctl(&["sign", "--keyring", ring, "--path", "/videos/a.mp4"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(stdout(&out).is_empty());
    let err = stderr(&out);
    for want in ["no active key yet", "\"k-new\"", "4102444800", "2100-01-01T00:00:00Z"] {
        assert!(err.contains(want), "{want:?} missing from {err}");
    }
    assert!(!err.contains(secret), "{err}");

    // Verifying works meanwhile, and a rotation at activate_after promotes the key, retiring nothing.
    let out = vdctl(&["rotate", "--keyring", ring, "--now", "4102444800"]);
    assert!(stdout(&out).contains("promoted k-new to active; no key was active before"), "{}", stdout(&out));
    let out = vdctl(&["sign", "--keyring", ring, "--path", "/videos/a.mp4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("kid=k-new"), "{}", stdout(&out));
}

#[tokio::test]
async fn request_rotation_sets_the_annotation_the_operator_acts_on() {
    use kube::api::{Api, PostParams};
    use videodelivery_operator::crd::{ROTATE_ANNOTATION, VideoDelivery};
    let cp = vd_testsupport::ControlPlane::shared();
    let ns = cp.namespace("vdctl").await.unwrap();
    let api: Api<VideoDelivery> = Api::namespaced(cp.client().await.unwrap(), &ns);
    let spec = serde_json::from_value(serde_json::json!({"storage": {"url": "s3://videos"}})).unwrap();
    api.create(&PostParams::default(), &VideoDelivery::new("media", spec)).await.unwrap();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vdctl"))
        .env("KUBECONFIG", cp.kubeconfig())
        .args(["request-rotation", "media", "-n", &ns])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let vd = api.get("media").await.unwrap();
    let stamp = vd.metadata.annotations.unwrap()[ROTATE_ANNOTATION].clone();
    assert!(stamp.starts_with("20") && stamp.ends_with('Z'), "{stamp}");

    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_vdctl"))
        .env("KUBECONFIG", cp.kubeconfig())
        .args(["request-rotation", "nope", "-n", &ns])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains(&format!("could not annotate VideoDelivery {ns}/nope")));
}
