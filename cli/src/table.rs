//! Plain-text tables, cut to the terminal's width.

use crate::text::{clean, cut, width};

/// Columns narrower than this are not cut further: past that the table overflows instead.
const MIN_CUT: usize = 8;

/// A table: a header and rows of cells, some columns right-aligned, some allowed to be cut.
#[derive(Debug)]
pub(crate) struct Table {
    headers: Vec<&'static str>,
    right: Vec<bool>,
    flexible: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns; `+` before a name right-aligns it, `~` lets it be cut.
    pub(crate) fn new(columns: &[&'static str]) -> Self {
        let mut table = Table {
            headers: Vec::new(),
            right: Vec::new(),
            flexible: Vec::new(),
            rows: Vec::new(),
        };
        for column in columns {
            let name = column.trim_start_matches(['+', '~']);
            table.right.push(column.starts_with('+'));
            table.flexible.push(column.starts_with('~'));
            table.headers.push(name);
        }
        table
    }

    /// Adds a row (its cells [`clean`]ed: one line each, no control characters).
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.iter().map(|c| clean(c)).collect());
    }

    /// The table, its columns two spaces apart. With a `max` width, the widest cuttable column
    /// is narrowed, again and again, until the table fits (no column below 8 cells).
    pub(crate) fn render(&self, max: Option<usize>) -> String {
        let n = self.headers.len();
        let mut widths: Vec<usize> = (0..n)
            .map(|i| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(i))
                    .map(|c| width(c))
                    .chain([width(self.headers[i])])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        if let Some(max) = max {
            let total = |w: &[usize]| w.iter().sum::<usize>() + 2 * n.saturating_sub(1);
            while total(&widths) > max {
                let widest = (0..n)
                    .filter(|&i| self.flexible[i] && widths[i] > MIN_CUT)
                    .max_by_key(|&i| widths[i]);
                let Some(i) = widest else { break };
                widths[i] -= 1;
            }
        }
        let mut out = String::new();
        let headers: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        for cells in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, &w) in widths.iter().enumerate() {
                let cell = cut(cells.get(i).map_or("", String::as_str), w);
                let pad = " ".repeat(w - width(&cell).min(w));
                if i > 0 {
                    line.push_str("  ");
                }
                if self.right[i] {
                    line.push_str(&pad);
                    line.push_str(&cell);
                } else {
                    line.push_str(&cell);
                    line.push_str(&pad);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        let mut t = Table::new(&["STEP", "+ATTEMPTS", "~ERROR"]);
        t.row(vec!["fetch".into(), "1".into(), String::new()]);
        t.row(vec![
            "parse".into(),
            "12".into(),
            "bad row\nat line 2: expected a number".into(),
        ]);
        t
    }

    #[test]
    fn columns_align_and_lines_end_without_spaces() {
        assert_eq!(
            table().render(None),
            "STEP   ATTEMPTS  ERROR\n\
             fetch         1\n\
             parse        12  bad row at line 2: expected a number\n"
        );
    }

    #[test]
    fn the_cuttable_column_is_cut_to_the_width() {
        let out = table().render(Some(30));
        assert_eq!(
            out,
            "STEP   ATTEMPTS  ERROR\n\
             fetch         1\n\
             parse        12  bad row at l…\n"
        );
        assert!(out.lines().all(|l| width(l) <= 30));
    }

    #[test]
    fn a_narrow_terminal_overflows_rather_than_cutting_to_nothing() {
        let out = table().render(Some(5));
        assert!(out.contains("parse        12  bad row…"), "{out}");
    }
}
