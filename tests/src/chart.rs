//! The benchmark's chart: ns over the empty program per path, one bar group per number
//! of tracked sources, as SVG.

use std::path::Path;

use plotters::prelude::*;

/// `rows`: (path, sources tracked, ns over the empty program).
pub fn kernel_cost(out: &Path, rows: &[(&str, u32, f64)]) -> Result<(), Box<dyn std::error::Error>> {
    let mut paths: Vec<&str> = vec![];
    for (p, _, _) in rows {
        if !paths.contains(p) {
            paths.push(p);
        }
    }
    let mut sizes: Vec<u32> = rows.iter().map(|(_, n, _)| *n).collect();
    sizes.dedup();
    let top = rows.iter().map(|(_, _, v)| *v).fold(10.0, f64::max) * 1.15;
    let root = SVGBackend::new(out, (1100, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let slots = paths.len() * (sizes.len() + 1);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "xknock: in-kernel cost per packet over an empty XDP program",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0..slots, 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        // Path names are drawn over the bars; plotters hangs on zero x labels, so
        // keep some and print them empty.
        .x_labels(paths.len().max(1))
        .x_label_formatter(&|_| String::new())
        .y_desc("ns over the empty program")
        .draw()?;
    let colors = [BLUE, GREEN, RED];
    for (si, n) in sizes.iter().enumerate() {
        let color = colors[si % colors.len()];
        let bars = rows.iter().filter(|(_, m, _)| m == n).map(|(p, _, v)| {
            let x = paths.iter().position(|q| q == p).unwrap_or(0) * (sizes.len() + 1) + si;
            Rectangle::new([(x, 0.0), (x + 1, *v)], color.filled())
        });
        chart
            .draw_series(bars)?
            .label(format!("{n} sources tracked"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    for (i, p) in paths.iter().enumerate() {
        let x = i * (sizes.len() + 1);
        chart.draw_series(std::iter::once(Text::new(
            (*p).to_owned(),
            (x, top * 0.97 - (i % 2) as f64 * top * 0.05),
            ("sans-serif", 11),
        )))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn draws() {
        let out = std::env::temp_dir().join("xknock-chart-test.svg");
        super::kernel_cost(
            &out,
            &[
                ("a", 1000, 10.0),
                ("b", 1000, 20.0),
                ("a", 65536, 12.0),
                ("b", 65536, 25.0),
            ],
        )
        .unwrap();
        assert!(std::fs::read_to_string(&out).unwrap().contains("<svg"));
    }
}
