//! Headless Chromium (Debian's `chromium`) driven over the DevTools protocol on a pipe
//! (`--remote-debugging-pipe`: JSON messages, NUL-terminated, on descriptors 3 and 4), run
//! inside a namespace the test created. Enough of the protocol to open a page (phone-sized,
//! with or without JavaScript), read its live DOM, and save a screenshot. The process is
//! killed when the `Browser` is dropped.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};

/// A running headless Chromium.
pub struct Browser {
    child: Child,
    to_browser: ChildStdin,
    from_browser: Receiver<Value>,
    /// Replies that arrived while waiting for another one, by id.
    pending: HashMap<u64, Value>,
    next_id: u64,
}

/// One page (a target with its flat session).
pub struct Page {
    session: String,
}

/// How long one protocol call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl Browser {
    /// Starts Chromium in namespace `ns` with its profile under `dir`.
    pub fn start(ns: &str, dir: &Path) -> Result<Self> {
        let profile = dir.join("chromium-profile");
        std::fs::create_dir_all(&profile)?;
        // fd 3 reads our commands (the pipe on stdin), fd 4 writes the replies (the pipe on
        // stdout); Chromium's own output goes to a log file, and its scratch directories
        // (org.chromium.Chromium.*) to `dir`, which the test removes.
        let script = format!(
            "TMPDIR={} exec chromium --headless=new --no-sandbox --disable-gpu --no-first-run --no-default-browser-check \
             --disable-extensions --disable-background-networking --remote-debugging-pipe \
             --user-data-dir={} about:blank 3<&0 4>&1 0</dev/null 1>{}/chromium.log 2>&1",
            dir.display(),
            profile.display(),
            dir.display()
        );
        // Its own process group, so the renderers and helpers go with it on drop.
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c", &script])
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromium (apt install chromium)")?;
        let to_browser = child.stdin.take().ok_or_else(|| anyhow!("no stdin pipe"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout pipe"))?;
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            loop {
                let mut msg = Vec::new();
                match r.read_until(0, &mut msg) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        msg.pop();
                        if let Ok(v) = serde_json::from_slice::<Value>(&msg) {
                            if tx.send(v).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        let mut b = Browser { child, to_browser, from_browser: rx, pending: HashMap::new(), next_id: 1 };
        b.call(None, "Browser.getVersion", json!({})).context("chromium did not answer on its pipe")?;
        Ok(b)
    }

    /// Sends `method` (to `session`, or the browser) and waits for its result.
    pub fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg)?;
        bytes.push(0);
        self.to_browser.write_all(&bytes).with_context(|| format!("sending {method}"))?;
        self.to_browser.flush()?;
        let end = Instant::now() + CALL_TIMEOUT;
        loop {
            if let Some(v) = self.pending.remove(&id) {
                return reply(method, v);
            }
            let left = end.checked_duration_since(Instant::now()).ok_or_else(|| anyhow!("{method}: no answer"))?;
            match self.from_browser.recv_timeout(left) {
                Ok(v) => {
                    // Events (no id) are not needed: the tests poll the DOM.
                    if let Some(got) = v.get("id").and_then(Value::as_u64) {
                        self.pending.insert(got, v);
                    }
                }
                Err(RecvTimeoutError::Timeout) => bail!("{method}: no answer within {CALL_TIMEOUT:?}"),
                Err(RecvTimeoutError::Disconnected) => bail!("{method}: chromium went away"),
            }
        }
    }

    /// A new page, `width`×`height` CSS pixels as a phone (touch, mobile viewport), with page
    /// scripts off when `javascript` is false; navigates to `url`, waits for the load.
    pub fn open(&mut self, url: &str, width: u32, height: u32, javascript: bool) -> Result<Page> {
        let target = self.call(None, "Target.createTarget", json!({ "url": "about:blank" }))?;
        let target_id = target["targetId"].as_str().ok_or_else(|| anyhow!("no targetId"))?.to_owned();
        let attached = self.call(None, "Target.attachToTarget", json!({ "targetId": target_id, "flatten": true }))?;
        let session = attached["sessionId"].as_str().ok_or_else(|| anyhow!("no sessionId"))?.to_owned();
        let s = Some(session.as_str());
        self.call(
            s,
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 2, "mobile": true }),
        )?;
        if !javascript {
            self.call(s, "Emulation.setScriptExecutionDisabled", json!({ "value": true }))?;
        }
        self.call(s, "Page.enable", json!({}))?;
        let nav = self.call(s, "Page.navigate", json!({ "url": url }))?;
        if let Some(e) = nav.get("errorText").and_then(Value::as_str) {
            bail!("navigating to {url}: {e}");
        }
        let page = Page { session };
        let end = Instant::now() + Duration::from_secs(20);
        // While the navigation commits the document is replaced: a node id from just before
        // is gone ("Could not find node"), so errors here mean "not loaded yet".
        while !self.loaded(&page).unwrap_or(false) || self.html(&page).map_or(true, |h| h.is_empty()) {
            if Instant::now() > end {
                bail!("{url} did not load within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(page)
    }

    fn loaded(&mut self, page: &Page) -> Result<bool> {
        // The navigation history's current entry is our URL once the page committed; the
        // DOM's `readyState` needs script, so the document node's children are counted.
        let doc = self.call(Some(&page.session), "DOM.getDocument", json!({ "depth": 1 }))?;
        Ok(doc["root"]["childNodeCount"].as_u64().unwrap_or(0) > 0)
    }

    /// The page's current DOM as HTML (works with scripts off too). A document replaced
    /// between the two calls (a navigation committing) is asked for again, a few times.
    pub fn html(&mut self, page: &Page) -> Result<String> {
        let mut tries = 0;
        loop {
            let doc = self.call(Some(&page.session), "DOM.getDocument", json!({ "depth": 0 }))?;
            let node = doc["root"]["nodeId"].as_u64().ok_or_else(|| anyhow!("no document node"))?;
            match self.call(Some(&page.session), "DOM.getOuterHTML", json!({ "nodeId": node })) {
                Ok(out) => return Ok(out["outerHTML"].as_str().unwrap_or("").to_owned()),
                Err(_) if tries < 10 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Evaluates `expression` in the page (scripts on) and returns its value.
    pub fn eval(&mut self, page: &Page, expression: &str) -> Result<Value> {
        let r = self.call(
            Some(&page.session),
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("{expression}: {e}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Saves a PNG of the page's viewport to `path`.
    pub fn screenshot(&mut self, page: &Page, path: &Path) -> Result<()> {
        let shot = self.call(Some(&page.session), "Page.captureScreenshot", json!({ "format": "png" }))?;
        let data = shot["data"].as_str().ok_or_else(|| anyhow!("no screenshot data"))?;
        let png = base64::engine::general_purpose::STANDARD.decode(data)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }
}

fn reply(method: &str, v: Value) -> Result<Value> {
    if let Some(e) = v.get("error") {
        bail!("{method}: {e}");
    }
    Ok(v.get("result").cloned().unwrap_or(Value::Null))
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: chromium, its zygote, renderers and GPU helper.
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
