//! The status page (`GET /`): what `/health` and `/tasks` say, for a person
//! during an incident. One self-contained HTML document: its styles inline,
//! no script, no external asset, reloading itself every few seconds. Every
//! text that comes from the application (task and call names, span fields,
//! stacks, paths) is escaped, so a task named `<script>` shows as text.

use std::fmt::Write as _;

use crate::model::health::{Health, RecentStall, StalledWorker};
use crate::{TaskDump, TaskState};

/// Seconds between the page's reloads.
pub(super) const REFRESH_SECONDS: u32 = 5;

/// Tasks listed on the page (all are counted; `/tasks` lists more).
pub(super) const PAGE_TASKS: usize = 100;

const STYLE: &str = "
:root{--ok:#1a7f37;--warn:#9a6700;--bad:#cf222e;--line:#d0d7de;--soft:#f6f8fa;--text:#1f2328;--dim:#59636e}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:var(--text);margin:0;padding:16px 24px;max-width:1400px}
h1{font-size:20px;margin:0 0 4px}
h2{font-size:16px;margin:24px 0 8px;padding-bottom:4px;border-bottom:1px solid var(--line)}
.status{display:inline-block;padding:2px 10px;border-radius:12px;color:#fff;font-weight:600;text-transform:uppercase;font-size:12px;vertical-align:middle}
.healthy{background:var(--ok)}.degraded{background:var(--warn)}.stalled{background:var(--bad)}
.dim{color:var(--dim)}
ul.issues{margin:8px 0;padding-left:20px}
ul.issues li{margin:2px 0}
table{border-collapse:collapse;width:100%;margin:4px 0 8px}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{background:var(--soft);font-weight:600;white-space:nowrap}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
code,pre{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
pre{background:var(--soft);padding:8px;overflow-x:auto;margin:4px 0;white-space:pre}
details summary{cursor:pointer;color:var(--dim)}
.cause{font-weight:600}
.hung{color:var(--bad);font-weight:600}.running{color:var(--warn)}
.spans{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;word-break:break-word}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:8px}
.card{border:1px solid var(--line);border-radius:6px;padding:6px 10px}
.card b{display:block;font-size:18px}
";

/// Escapes `text` for HTML text and attribute values.
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn secs(s: f64) -> String {
    if s >= 3600.0 {
        format!("{:.1} h", s / 3600.0)
    } else if s >= 60.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{s:.1} s")
    }
}

fn bytes(b: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if b as f64 >= 1024.0 * MIB {
        format!("{:.2} GiB", b as f64 / (1024.0 * MIB))
    } else {
        format!("{:.1} MiB", b as f64 / MIB)
    }
}

fn opt(text: Option<&str>) -> String {
    text.map_or_else(|| "<span class=\"dim\">—</span>".to_owned(), escape)
}

fn spans(chain: &[String]) -> String {
    if chain.is_empty() {
        return "<span class=\"dim\">—</span>".to_owned();
    }
    let parts: Vec<String> = chain.iter().map(|s| escape(s)).collect();
    format!("<span class=\"spans\">{}</span>", parts.join(" &gt; "))
}

/// The stack of a stall, under a disclosure.
fn stack(out: &mut String, stall: Option<&RecentStall>) {
    let Some(stall) = stall else { return };
    match (&stall.backtrace, &stall.stack_missing) {
        (Some(bt), _) => {
            let partial = if stall.stack_complete == Some(false) {
                " (partial)"
            } else {
                ""
            };
            let _ = write!(
                out,
                "<details><summary>stack of the stuck thread{partial}</summary><pre>{}</pre></details>",
                escape(bt)
            );
        }
        (None, Some(why)) => {
            let _ = write!(out, "<div class=\"dim\">no stack: {}</div>", escape(why));
        }
        (None, None) => {}
    }
}

fn cause(cause: crate::StallCause, cpu: Option<&crate::CpuAccount>) -> String {
    let detail = cpu.map(|c| format!(" <span class=\"dim\">({})</span>", escape(&c.to_string())));
    format!(
        "<span class=\"cause\">{}</span>{}",
        cause.as_str(),
        detail.unwrap_or_default()
    )
}

/// The whole page.
pub(super) fn render(health: &Health, tasks: &TaskDump, hung_threshold: f64) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let status = health.status.as_str();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>loopwatch: {status}</title><style>{STYLE}</style></head><body>"
    );
    let _ = write!(
        out,
        "<h1>loopwatch <span id=\"status\" class=\"status {status}\">{status}</span></h1>\
         <div class=\"dim\">pid {} · reloads every {REFRESH_SECONDS} s · \
         <a href=\"/health\">/health</a> · <a href=\"/metrics\">/metrics</a> · \
         <a href=\"/tasks?format=text\">/tasks</a></div>",
        std::process::id()
    );
    if health.issues.is_empty() {
        out.push_str("<p id=\"issues\" class=\"dim\">No issues.</p>");
    } else {
        out.push_str("<ul id=\"issues\" class=\"issues\">");
        for issue in &health.issues {
            let _ = write!(out, "<li>{}</li>", escape(issue));
        }
        out.push_str("</ul>");
    }
    runtimes(&mut out, health);
    recent(&mut out, health);
    task_section(&mut out, health, tasks, hung_threshold);
    calls(&mut out, health);
    process(&mut out, health);
    out.push_str("</body></html>\n");
    out
}

fn runtimes(out: &mut String, health: &Health) {
    out.push_str("<h2>Runtimes</h2>");
    if health.runtimes.is_empty() {
        out.push_str("<p class=\"dim\">No runtime is watched.</p>");
        return;
    }
    out.push_str(
        "<table id=\"runtimes\"><tr><th>runtime</th><th>flavor</th><th class=\"n\">workers</th>\
         <th class=\"n\">heartbeat age</th><th class=\"n\">stalls</th><th class=\"n\">last stall</th></tr>",
    );
    for rt in &health.runtimes {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(&rt.name),
            escape(&rt.flavor),
            rt.workers,
            secs(rt.heartbeat_age_seconds),
            rt.stalls_total,
            rt.last_stall_seconds.map_or_else(|| "—".to_owned(), secs)
        );
    }
    out.push_str("</table>");
    let stalled: Vec<(&str, &StalledWorker)> = health
        .runtimes
        .iter()
        .flat_map(|rt| {
            rt.stalled_workers
                .iter()
                .map(move |w| (rt.name.as_str(), w))
        })
        .collect();
    if stalled.is_empty() {
        return;
    }
    out.push_str(
        "<h2>Stalled now</h2><table id=\"stalled\"><tr><th>runtime</th><th>worker</th>\
         <th class=\"n\">stuck for</th><th>task</th><th>cause</th><th>culprit</th><th>spans</th></tr>",
    );
    for (runtime, w) in stalled {
        let _ = write!(
            out,
            "<tr class=\"stalled-worker\"><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td>\
             <td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
            escape(runtime),
            w.worker.map_or_else(|| "?".to_owned(), |i| i.to_string()),
            secs(w.stalled_for_seconds),
            opt(w.task.as_deref()),
            cause(w.cause, w.cpu.as_ref()),
            opt(w.culprit.as_deref()),
            spans(&w.spans)
        );
        let report = health
            .recent_stalls
            .iter()
            .find(|s| !s.ended && s.runtime == runtime && s.worker == w.worker);
        let mut extra = String::new();
        if let Some(why) = &w.unconfirmed {
            let _ = write!(
                extra,
                "<div class=\"dim\">unconfirmed: {}</div>",
                escape(why)
            );
        }
        stack(&mut extra, report);
        if !extra.is_empty() {
            let _ = write!(out, "<tr><td></td><td colspan=\"6\">{extra}</td></tr>");
        }
    }
    out.push_str("</table>");
}

fn recent(out: &mut String, health: &Health) {
    out.push_str("<h2>Recent stalls</h2>");
    if health.recent_stalls.is_empty() {
        out.push_str("<p class=\"dim\">None.</p>");
        return;
    }
    out.push_str(
        "<table id=\"recent\"><tr><th>runtime</th><th>worker</th><th class=\"n\">length</th>\
         <th>state</th><th>task</th><th>cause</th><th>culprit</th><th>spans</th></tr>",
    );
    for s in &health.recent_stalls {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td><code>{}</code></td><td>{}</td></tr>",
            escape(&s.runtime),
            s.worker.map_or_else(|| "?".to_owned(), |i| i.to_string()),
            secs(s.stalled_for_seconds),
            if s.ended { "ended" } else { "ongoing" },
            opt(s.task.as_deref()),
            cause(s.cause, s.cpu.as_ref()),
            opt(s.culprit.as_deref()),
            spans(&s.spans)
        );
        let mut extra = String::new();
        stack(&mut extra, Some(s));
        if !extra.is_empty() {
            let _ = write!(out, "<tr><td></td><td colspan=\"7\">{extra}</td></tr>");
        }
    }
    out.push_str("</table>");
}

fn task_section(out: &mut String, health: &Health, dump: &TaskDump, hung_threshold: f64) {
    let t = &health.tasks;
    out.push_str("<h2>Tasks</h2><div class=\"grid\" id=\"task-counts\">");
    for (label, n) in [
        ("alive", dump.total),
        ("running", dump.running),
        ("idle", dump.idle),
        ("hung", dump.hung),
        ("spawned", t.spawned),
        ("completed", t.completed),
        ("failed", t.failed),
        ("panicked", t.panicked),
        ("cancelled", t.cancelled),
        ("slow polls", t.slow_polls),
    ] {
        let _ = write!(out, "<div class=\"card\"><b>{n}</b>{label}</div>");
    }
    out.push_str("</div>");
    if dump.tasks.is_empty() {
        out.push_str("<p class=\"dim\">No live task spawned through loopwatch.</p>");
        return;
    }
    let _ = write!(
        out,
        "<p class=\"dim\">{} of {} live tasks, the longest idle first; hung after {}; \
         all of them at <a href=\"/tasks?format=text\">/tasks</a>.</p>",
        dump.tasks.len(),
        dump.total,
        secs(hung_threshold)
    );
    out.push_str(
        "<table id=\"tasks\"><tr><th class=\"n\">id</th><th>name</th><th>state</th>\
         <th class=\"n\">for</th><th class=\"n\">age</th><th class=\"n\">polls</th>\
         <th>spawned at</th><th>where it waits (spans)</th></tr>",
    );
    for task in &dump.tasks {
        let class = match task.state {
            TaskState::Hung => "hung",
            TaskState::Running => "running",
            _ => "idle",
        };
        let mut where_ = spans(&task.spans);
        for other in &task.other_spans {
            let _ = write!(where_, "<br>and {}", spans(other));
        }
        let _ = write!(
            out,
            "<tr class=\"task\"><td class=\"n\">{}</td><td class=\"task-name\">{}</td>\
             <td class=\"{class}\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td><code>{}</code></td><td>{where_}</td></tr>",
            task.id.map_or_else(|| "?".to_owned(), |id| id.to_string()),
            escape(&task.name),
            task.state.as_str(),
            secs(task.state_seconds),
            secs(task.age_seconds),
            task.polls,
            escape(&task.spawned_at)
        );
    }
    out.push_str("</table>");
}

fn calls(out: &mut String, health: &Health) {
    out.push_str("<h2>Calls</h2>");
    if health.calls.is_empty() {
        out.push_str("<p class=\"dim\">No instrumented call yet.</p>");
        return;
    }
    out.push_str(
        "<table id=\"calls\"><tr><th>call</th><th class=\"n\">calls</th><th class=\"n\">blocking</th>\
         <th class=\"n\">slow</th><th class=\"n\">failed</th></tr>",
    );
    for (name, c) in &health.calls {
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(name),
            c.calls,
            c.blocking,
            c.slow,
            c.failed
        );
    }
    out.push_str("</table>");
}

fn process(out: &mut String, health: &Health) {
    let p = &health.process;
    out.push_str("<h2>Process</h2><div class=\"grid\" id=\"process\">");
    let mut card = |value: String, label: &str| {
        let _ = write!(
            out,
            "<div class=\"card\"><b>{}</b>{label}</div>",
            escape(&value)
        );
    };
    card(bytes(p.resident_memory_bytes), "resident memory");
    card(format!("{:.1} s", p.cpu_seconds), "CPU time");
    card(p.threads.to_string(), "threads");
    card(p.open_fds.to_string(), "open files");
    if let Some(cores) = p.cpu_limit_cores {
        card(format!("{cores:.2} cores"), "CPU limit");
    }
    if let Some(t) = p.cpu_throttled_seconds {
        card(secs(t), "throttled by the CPU limit");
    }
    if let Some(limit) = p.memory_limit_bytes {
        card(bytes(limit), "memory limit");
    }
    if let Some(ws) = p.memory_working_set_bytes {
        card(bytes(ws), "cgroup working set");
    }
    if p.pauses > 0 {
        card(
            format!("{} ({})", p.pauses, secs(p.paused_seconds)),
            "whole-process pauses",
        );
    }
    out.push_str("</div>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_from_the_application_is_escaped() {
        assert_eq!(
            escape("<script>alert('x') & \"y\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
        let health = Health {
            issues: vec!["task '<img src=x onerror=alert(1)>' hung".into()],
            ..Health::default()
        };
        let dump = TaskDump::default();
        let page = render(&health, &dump, 60.0);
        assert!(!page.contains("<img"), "{page}");
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(!page.contains("<script"), "no script at all");
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("http-equiv=\"refresh\""));
    }
}
