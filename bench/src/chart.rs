//! The benchmark's charts, as SVG: grouped bars, one group per path or traffic kind
//! and one colour per series.

use std::path::Path;

use plotters::prelude::*;

pub type Error = Box<dyn std::error::Error>;

/// One bar chart: `groups` along the x axis, and per series a name and one value per
/// group.
pub struct Bars<'a> {
    pub title: &'a str,
    pub y_desc: &'a str,
    pub groups: Vec<String>,
    pub series: Vec<(String, Vec<f64>)>,
}

impl Bars<'_> {
    pub fn draw(&self, out: &Path) -> Result<(), Error> {
        let per_group = self.series.len() + 1;
        let values = self.series.iter().flat_map(|(_, v)| v.iter().copied());
        let top = values.fold(1.0, f64::max) * 1.15;
        let root = SVGBackend::new(out, (1100, 520)).into_drawing_area();
        root.fill(&WHITE)?;
        let slots = self.groups.len() * per_group;
        let mut chart = ChartBuilder::on(&root)
            .caption(self.title, ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0..slots, 0.0..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            // Group names are drawn over the bars; plotters hangs on zero x labels, so
            // keep some and print them empty.
            .x_labels(self.groups.len().max(1))
            .x_label_formatter(&|_| String::new())
            .y_desc(self.y_desc)
            .draw()?;
        let colors = [BLUE, GREEN, RED, MAGENTA];
        for (si, (name, values)) in self.series.iter().enumerate() {
            let color = colors[si % colors.len()];
            let bars = values.iter().enumerate().map(|(g, v)| {
                let x = g * per_group + si;
                Rectangle::new([(x, 0.0), (x + 1, *v)], color.filled())
            });
            chart
                .draw_series(bars)?
                .label(name.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        }
        for (i, g) in self.groups.iter().enumerate() {
            chart.draw_series(std::iter::once(Text::new(
                g.clone(),
                (i * per_group, top * 0.97 - (i % 2) as f64 * top * 0.05),
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
}

/// The in-kernel chart. `rows`: (path, sources tracked, ns over the empty program).
pub fn kernel_cost(out: &Path, rows: &[(&str, u32, f64)]) -> Result<(), Error> {
    let mut groups: Vec<String> = vec![];
    let mut sizes: Vec<u32> = vec![];
    for (p, n, _) in rows {
        if !groups.iter().any(|g| g == p) {
            groups.push((*p).to_owned());
        }
        if !sizes.contains(n) {
            sizes.push(*n);
        }
    }
    let series = sizes
        .iter()
        .map(|n| {
            let values = groups
                .iter()
                .map(|g| {
                    rows.iter()
                        .find(|(p, m, _)| p == g && m == n)
                        .map_or(0.0, |r| r.2)
                })
                .collect();
            (format!("{n} sources tracked"), values)
        })
        .collect();
    Bars {
        title: "xknock: in-kernel cost per packet over an empty XDP program",
        y_desc: "ns over the empty program",
        groups,
        series,
    }
    .draw(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn draws() {
        let out = std::env::temp_dir().join(format!("xknock-chart-test-{}.svg", std::process::id()));
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
        let svg = std::fs::read_to_string(&out).unwrap();
        let _ = std::fs::remove_file(&out);
        assert!(svg.contains("<svg") && svg.contains("65536 sources tracked"));
    }
}
