//! Prints results as aligned tables or JSON.

use super::*;

/// Prints results as aligned tables or JSON.
#[derive(Debug, Clone, Copy)]
pub(super) struct Printer(pub(super) Output);

impl Printer {
    pub(super) fn json(self, value: Value) {
        println!("{value}");
    }

    pub(super) fn table(self, headers: &[&str], rows: Vec<Vec<String>>, json: Value) {
        if self.0 == Output::Json {
            return self.json(json);
        }
        let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: Vec<String>| {
            let text: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            println!("{}", text.join("  ").trim_end());
        };
        line(headers.iter().map(|h| (*h).to_owned()).collect());
        for row in rows {
            line(row);
        }
    }

    pub(super) fn message(self, text: String, json: Value) {
        if self.0 == Output::Json {
            self.json(json);
        } else {
            println!("{text}");
        }
    }

    pub(super) fn revision(self, text: &str, revision: u64) {
        self.message(
            format!("{text} (revision {revision})"),
            json!({"revision": revision}),
        );
    }

    pub(super) fn update(self, update: &pb::AssignmentUpdate) {
        if self.0 == Output::Json {
            let upserts: Vec<Value> = update
                .upserts
                .iter()
                .map(|a| {
                    json!({"tenant_id": a.tenant_id, "service": a.service, "version": a.version,
                           "source": a.source,
                           "instances": a.instances.iter().map(|i| json!({
                               "instance_id": i.instance_id, "address": i.address,
                               "healthy": i.healthy})).collect::<Vec<_>>()})
                })
                .collect();
            let removals: Vec<Value> = update
                .removals
                .iter()
                .map(|k| json!({"tenant_id": k.tenant_id, "service": k.service}))
                .collect();
            return self.json(
                json!({"revision": update.revision, "history": update.history,
                "snapshot": update.snapshot, "partial": update.partial, "upserts": upserts,
                "removals": removals}),
            );
        }
        let kind = if update.snapshot {
            "snapshot"
        } else {
            "change"
        };
        println!(
            "revision {} {kind}: {} upsert(s), {} removal(s) (history {})",
            update.revision,
            update.upserts.len(),
            update.removals.len(),
            update.history
        );
        for a in &update.upserts {
            let addresses: Vec<&str> = a.instances.iter().map(|i| i.address.as_str()).collect();
            println!(
                "  {} {} -> {} ({}) [{}]",
                a.tenant_id,
                a.service,
                a.version,
                a.source,
                addresses.join(" ")
            );
        }
        for k in &update.removals {
            println!("  {} {} removed", k.tenant_id, k.service);
        }
    }
}
