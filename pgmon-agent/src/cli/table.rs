//! The tables the CLI prints, drawn by `comfy-table` in psql's aligned format: columns as
//! wide as their widest cell (a 63-byte role name, PostgreSQL's `NAMEDATALEN` − 1, widens
//! its column instead of pushing the rest of its row out of line), separated by ` | `,
//! headers centred over a `-+-` rule (an odd space goes left, where psql puts it right), numbers right-aligned, no outer border:
//!
//! ```text
//!  role  | queries | p50 ms
//! -------+---------+--------
//!  alice |    1204 |   0.31
//! ```
//!
//! Plain ASCII, so it reads the same in a terminal, in the journal and in a test's log.
//! Cells are never wrapped nor cut (comfy-table's `ContentArrangement::Disabled`); a line is
//! as long as its widest row.

use comfy_table::{Cell, CellAlignment, Table, TableStyle};

/// psql's `\pset format aligned` with `\pset border 1` (its default).
const PSQL: TableStyle = {
    use comfy_table::{ContentLineStyle, LineStyle};
    TableStyle::new()
        .header_lines(ContentLineStyle::none().junction('|'))
        .header_separator(LineStyle::none().fill('-').junction('+'))
        .content_lines(ContentLineStyle::none().junction('|'))
};

/// How a column's cells sit in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// Text: names, states, notes.
    Left,
    /// Numbers, so their digits line up.
    Right,
}

/// A table with these columns (header text and alignment), and no rows yet.
pub fn table(columns: &[(&str, Align)]) -> Table {
    let mut t = Table::new();
    t.load_style(PSQL).set_header(
        columns
            .iter()
            .map(|(name, _)| Cell::new(name).set_alignment(CellAlignment::Center)),
    );
    for (column, (_, align)) in t.column_iter_mut().zip(columns) {
        column.set_cell_alignment(match align {
            Align::Left => CellAlignment::Left,
            Align::Right => CellAlignment::Right,
        });
    }
    t
}

/// `t` as lines, each ending in `\n`, without the trailing blanks of a short last cell.
pub fn render(t: &Table) -> String {
    let mut o = t.trim_fmt();
    o.push('\n');
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_like_psql() {
        let mut t = table(&[("role", Align::Left), ("queries", Align::Right)]);
        t.add_row(["alice", "1204"]);
        t.add_row(["bob", "7"]);
        assert_eq!(
            render(&t),
            "  role | queries\n\
             -------+---------\n \
             alice |    1204\n \
             bob   |       7\n"
        );
    }
}
