//! The console's pages, rendered on the server as plain HTML (no script). Every text
//! goes through [`escape`]; the pages only read: the two forms are GET forms that show
//! an answer.

use std::fmt::Write;

use axum::http::StatusCode;

use super::html::{escape, query_component};
use super::{ExplainQuery, Explained, LedgerQuery, Lookup, Snapshot, certificates};
use crate::store::StoredItem;

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin-bottom:1.5em}\
th,td{border:1px solid #bbb;padding:.25em .6em;text-align:left;vertical-align:top}\
th{background:#eee}td.num{text-align:right}\
.bad{color:#a00;font-weight:bold}.good{color:#070;font-weight:bold}\
nav a{margin-right:1em}code,.mono{font-family:monospace;word-break:break-all}\
.withheld{color:#a00}.allowed{color:#070}";

/// The page frame around `body`, titled `title`, for node `node` (empty on error
/// pages).
fn page(node: &str, title: &str, body: &str) -> String {
    let node = if node.is_empty() {
        String::new()
    } else {
        format!(
            " <small>· <span id=\"node\">{}</span></small>",
            escape(node)
        )
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>{title}</title><style>{STYLE}</style></head><body>\
<nav><a href=\"/\">Overview</a><a href=\"/ledger\">Who received</a>\
<a href=\"/explain\">Explain a decision</a><a href=\"/metrics\">Metrics</a></nav>\
<h1>{title}{node}</h1>\n{body}</body></html>\n",
        title = escape(title),
    )
}

/// A time as UTC, to the second.
fn when(ms: i64) -> String {
    if ms <= 0 {
        return "never".to_owned();
    }
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(ms / 1000) else {
        return ms.to_string();
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// How long ago `ms` was, in seconds.
fn ago(now_ms: i64, ms: i64) -> String {
    if ms <= 0 {
        return "never".to_owned();
    }
    format!("{:.0} s ago", (now_ms - ms).max(0) as f64 / 1000.0)
}

/// The overview: the node, its partners, link health both ways, recent rejections and
/// certificate expiry.
pub fn overview(s: &Snapshot) -> String {
    let mut b = String::new();
    let _ = writeln!(
        b,
        "<table id=\"summary\"><tr><th>Policy hash</th><td class=\"mono\">{}</td></tr>\
<tr><th>Feed head</th><td class=\"num\" id=\"feed-head\">{}</td></tr>\
<tr><th>Store size</th><td class=\"num\" id=\"store-bytes\">{} bytes</td></tr>\
<tr><th>Ledger records</th><td class=\"num\" id=\"ledger-records\">{}</td></tr>\
<tr><th>As of</th><td>{}</td></tr></table>",
        escape(&s.policy_hash),
        s.feed_head,
        s.store_bytes,
        s.ledger_records,
        when(s.now_ms),
    );
    if let Some((reason, since)) = &s.retention.failing {
        let _ = writeln!(
            b,
            "<p id=\"retention-failing\" class=\"bad\">Ledger retention has failed since {} ({} attempts): {}. The segments due are kept and tried again; writes and deliveries go on.</p>",
            when(*since),
            s.retention.failures,
            escape(reason),
        );
    }

    b.push_str("<h2>Partners</h2>\n<table id=\"partners\"><tr><th>Partner</th><th>Kind</th><th>Role</th><th>Highest marking</th><th>Receives</th></tr>\n");
    for p in &s.partners {
        let _ = writeln!(
            b,
            "<tr data-partner=\"{id}\"><td>{id}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(p.kind),
            escape(p.role),
            escape(&p.max_tlp),
            if p.receives { "yes" } else { "nothing" },
            id = escape(&p.id),
        );
    }
    b.push_str("</table>\n");

    b.push_str("<h2>Pulled by this node</h2>\n<p>Each peer this node pulls from: whether this node is caught up with the peer's change feed (a peer gives its feed positions only sealed, so not by how many entries).</p>\n");
    if s.links.is_empty() {
        b.push_str("<p id=\"pulled-none\">No link: no <code>[[peer]]</code> with role <code>peer</code>.</p>\n");
    } else {
        b.push_str("<table id=\"pulled\"><tr><th>Peer</th><th>Address</th><th>State</th><th>Behind for</th><th>Bundles received / rejected</th><th>Items received / rejected</th><th>Last message</th><th>Last error</th></tr>\n");
        for (peer, l) in &s.links {
            let state = if l.caught_up() {
                "<span class=\"good\">caught up</span>"
            } else if l.connected && l.held_back > 0 {
                "<span class=\"bad\">holding back bundles refused for now</span>"
            } else if l.connected {
                "<span>catching up</span>"
            } else {
                "<span class=\"bad\">disconnected</span>"
            };
            let behind_ms = l.behind_since_ms.map_or(0, |t| (s.now_ms - t).max(0));
            let _ = writeln!(
                b,
                "<tr data-peer=\"{id}\"><td>{id}</td><td>{}</td><td class=\"state\">{state}</td>\
<td class=\"num lag\">{:.1} s</td><td class=\"num bundles\">{} / {}</td><td class=\"num items\">{} / {}</td>\
<td>{}</td><td class=\"error\">{}</td></tr>",
                escape(&l.address),
                behind_ms as f64 / 1000.0,
                l.received,
                l.rejected,
                l.items_received,
                l.items_rejected,
                ago(s.now_ms, l.last_message_ms),
                escape(l.last_error.as_deref().unwrap_or("")),
                id = escape(peer.as_str()),
            );
        }
        b.push_str("</table>\n");
    }

    b.push_str("<h2>Pulled from this node</h2>\n<p>Each partner that has pulled from this node since it started: how far in this node's feed it has been served (this node's own positions; the partner is given them only sealed).</p>\n");
    if s.served.is_empty() {
        b.push_str("<p id=\"served-none\">No partner has pulled since the node started.</p>\n");
    } else {
        b.push_str("<table id=\"served\"><tr><th>Partner</th><th>Served up to</th><th>Head then</th><th>Behind the head now (entries)</th><th>Last served</th></tr>\n");
        for (partner, p) in &s.served {
            let _ = writeln!(
                b,
                "<tr data-partner=\"{id}\"><td>{id}</td><td class=\"num cursor\">{}</td><td class=\"num\">{}</td><td class=\"num behind\">{}</td><td>{}</td></tr>",
                p.cursor,
                p.head,
                s.feed_head.saturating_sub(p.cursor),
                ago(s.now_ms, p.time_ms),
                id = escape(partner),
            );
        }
        b.push_str("</table>\n");
    }

    b.push_str("<h2>Recent rejections</h2>\n");
    if s.rejections.is_empty() {
        b.push_str("<p id=\"rejections-none\">Nothing pulled has been rejected since the node started.</p>\n");
    } else {
        b.push_str("<table id=\"rejections\"><tr><th>When</th><th>Peer</th><th>Reason</th><th>Detail</th></tr>\n");
        for r in &s.rejections {
            let _ = writeln!(
                b,
                "<tr data-peer=\"{peer}\"><td>{}</td><td>{peer}</td><td class=\"reason\">{}</td><td class=\"detail\">{}</td></tr>",
                when(r.time_ms),
                escape(r.reason),
                escape(&r.detail),
                peer = escape(&r.peer),
            );
        }
        b.push_str("</table>\n");
    }

    b.push_str("<h2>Certificates</h2>\n<table id=\"certificates\"><tr><th>Certificate</th><th>Subject</th><th>File</th><th>Expires</th><th>Days left</th></tr>\n");
    for c in &s.certificates {
        let days = certificates::days_left(c, s.now_ms);
        let class = if days < 30.0 { "num bad" } else { "num" };
        let _ = writeln!(
            b,
            "<tr data-certificate=\"{role}\"><td>{role}</td><td>{}{}</td><td class=\"mono\">{}</td><td>{}</td><td class=\"{class} days\">{:.0}</td></tr>",
            escape(&c.subject),
            c.revoked_by.as_deref().map_or_else(String::new, |issuer| format!(
                " <strong class=\"bad revoked\">revoked by the CRL of {}: partners refuse this node</strong>",
                escape(issuer)
            )),
            escape(&c.file),
            when(c.not_after_ms),
            days.floor(),
            role = escape(c.role),
        );
    }
    b.push_str("</table>\n");

    b.push_str("<h2>Limits</h2>\n<table id=\"limits\"><tr><th>Limit</th><th>Value</th><th>Refused since start</th></tr>\n");
    let counters = crate::limits::counters();
    for (key, value, limit) in s.limits.describe() {
        let _ = writeln!(
            b,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            escape(key),
            escape(&value),
            limit.map_or_else(String::new, |l| counters.refused(l).to_string()),
        );
    }
    b.push_str("</table>\n");
    page(&s.node, "Overview", &b)
}

/// An item as held, in a definition list.
fn item_summary(b: &mut String, stored: &StoredItem) {
    let item = &stored.item;
    let _ = writeln!(
        b,
        "<dl class=\"item\" data-item=\"{id}\"><dt>Item</dt><dd class=\"mono\">{id}</dd>\
<dt>Type</dt><dd>{}</dd><dt>Value</dt><dd class=\"value mono\">{}</dd><dt>Marking</dt><dd>TLP:{}</dd>\
<dt>Tags</dt><dd>{}</dd><dt>Origin</dt><dd>{}</dd><dt>Received from</dt><dd>{}</dd><dt>Hops</dt><dd>{}</dd>\
<dt>Bundle</dt><dd class=\"mono\">{} #{}</dd></dl>",
        escape(item.indicator_type().as_str()),
        escape(item.value().unwrap_or("")),
        escape(item.tlp.as_str()),
        escape(&item.tags.join(", ")),
        escape(stored.origin.as_str()),
        escape(stored.received_from.as_str()),
        stored.hops,
        escape(&stored.bundle_id.to_string()),
        stored.index,
        id = escape(item.id.as_str()),
    );
}

/// The ledger lookup: a form, and who received the item or the value.
pub fn ledger(
    node: &str,
    query: &LedgerQuery,
    found: Option<&Lookup>,
    problem: Option<&str>,
) -> String {
    let mut b = String::new();
    let _ = writeln!(
        b,
        "<form id=\"lookup\" method=\"get\" action=\"/ledger\">\
<label>Item id <input name=\"item\" size=\"50\" maxlength=\"200\" value=\"{}\"></label> \
<label>or value <input name=\"value\" size=\"40\" maxlength=\"2048\" value=\"{}\"></label> \
<button type=\"submit\">Look up</button></form>",
        escape(&query.item),
        escape(&query.value),
    );
    if let Some(problem) = problem {
        let _ = writeln!(b, "<p id=\"problem\" class=\"bad\">{}</p>", escape(problem));
    }
    if let Some(found) = found {
        if found.items.is_empty() {
            b.push_str("<p id=\"not-held\">No item held matches.</p>\n");
        }
        for stored in &found.items {
            item_summary(&mut b, stored);
        }
        // Which versions were matched against the ledger: a delivery names the version
        // it carried, so one the store no longer holds cannot be matched.
        if !found.versions.is_empty() {
            let _ = writeln!(
                b,
                "<p id=\"versions-searched\">Deliveries of {} version(s) held were looked for{}, replaced and revoked versions included. A version a compaction removed from the store is not held and cannot be matched: its deliveries are not listed (<code>entente ledger show</code> lists every record).</p>",
                found.versions.len(),
                if found.versions_complete {
                    ""
                } else {
                    " (the lookup stopped at its bound: later versions first, older ones left out)"
                },
            );
            b.push_str("<table id=\"versions\"><tr><th>Item</th><th>Version (modified)</th><th>Kind</th><th>Bundle</th></tr>\n");
            for v in &found.versions {
                let kind = match v.item.value() {
                    Some(value) => format!("{} {}", v.item.indicator_type().as_str(), value),
                    None if matches!(v.item.kind, crate::model::ItemKind::Revocation(_)) => {
                        "revocation".to_owned()
                    }
                    None => v.item.indicator_type().as_str().to_owned(),
                };
                let _ = writeln!(
                    b,
                    "<tr class=\"version\" data-item=\"{id}\"><td class=\"mono\">{id}</td><td>{}</td><td>{}</td><td class=\"mono\">{} #{}</td></tr>",
                    when(v.item.modified_ms),
                    escape(&kind),
                    escape(&v.bundle_id.to_string()),
                    v.index,
                    id = escape(v.item.id.as_str()),
                );
            }
            b.push_str("</table>\n");
        }
        let _ = writeln!(
            b,
            "<p id=\"scanned\">{} ledger records read{}.</p>",
            found.scanned,
            if found.complete {
                ""
            } else {
                " (the lookup stopped at its bound: the list below may be incomplete)"
            }
        );
        if found.deliveries.is_empty() {
            b.push_str("<p id=\"no-deliveries\">The ledger records no delivery of it.</p>\n");
        } else {
            b.push_str("<table id=\"deliveries\"><tr><th>When</th><th>Partner</th><th>Path</th><th>Item</th><th>Version (modified)</th><th>Bundle</th></tr>\n");
            for d in &found.deliveries {
                let _ = writeln!(
                    b,
                    "<tr data-partner=\"{partner}\"><td>{}</td><td>{partner}</td><td class=\"path\">{}</td><td class=\"mono\">{}</td><td>{}</td><td class=\"mono\">{} #{}</td></tr>",
                    when(d.time_ms),
                    escape(&d.path),
                    escape(&d.item),
                    when(d.modified_ms),
                    escape(&d.bundle),
                    d.index,
                    partner = escape(&d.partner),
                );
            }
            b.push_str("</table>\n");
        }
    }
    page(node, "Who received", &b)
}

/// The explain form (carrying the console's form token) and, when asked, the decision.
pub fn explain(
    node: &str,
    query: &ExplainQuery,
    partners: &[String],
    token: &str,
    answer: Option<&Result<Explained, String>>,
) -> String {
    let mut b = String::new();
    let _ = write!(
        b,
        "<form id=\"explain\" method=\"get\" action=\"/explain\">\
<input type=\"hidden\" name=\"confirm\" value=\"{}\"><label>Partner <select name=\"partner\">",
        escape(token),
    );
    for p in partners {
        let _ = write!(
            b,
            "<option value=\"{p}\"{}>{p}</option>",
            if *p == query.partner { " selected" } else { "" },
            p = escape(p),
        );
    }
    let _ = writeln!(
        b,
        "</select></label> <label>Item id <input name=\"item\" size=\"50\" maxlength=\"200\" value=\"{}\"></label> \
<button type=\"submit\">Explain</button></form>",
        escape(&query.item),
    );
    match answer {
        None => {}
        Some(Err(problem)) => {
            let _ = writeln!(b, "<p id=\"problem\" class=\"bad\">{}</p>", escape(problem));
        }
        Some(Ok(e)) => {
            let (class, verdict) = if e.allowed {
                ("allowed", "would receive it")
            } else {
                ("withheld", "would not receive it")
            };
            let _ = writeln!(
                b,
                "<p id=\"decision\" class=\"{class}\">{} {verdict}.</p><p id=\"rule\">{}</p>",
                escape(&query.partner),
                escape(&e.rule),
            );
            item_summary(&mut b, &e.stored);
            let _ = writeln!(
                b,
                "<p><a id=\"who-received\" href=\"/ledger?item={}\">Who received this item</a></p>",
                escape(&query_component(e.stored.item.id.as_str())),
            );
        }
    }
    page(node, "Explain a decision", &b)
}

/// An error page.
pub fn error(status: StatusCode, message: &str) -> String {
    page(
        "",
        &format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        ),
        &format!("<p id=\"problem\" class=\"bad\">{}</p>\n", escape(message)),
    )
}
