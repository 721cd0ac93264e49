//! The statistics the benchmark reports share: medians, the sign-test confidence interval
//! of a median (distribution-free, for the rounds' ratios), and English ordinals for the
//! ranks it names.

/// `1st`, `2nd`, `3rd`, `4th`, … (`11th`–`13th` included).
pub fn ordinal(k: usize) -> String {
    let suffix = match (k % 10, k % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{k}{suffix}")
}

/// The median of `v` (NaN when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A distribution-free confidence interval of at least 95 % for the median of the
/// population `v` was drawn from: the `k`-th smallest and `k`-th largest sample, `k` the
/// largest rank with P(Binomial(n, ½) < k) ≤ 2.5 % (the sign-test interval; for n = 10,
/// the 2nd and 9th of 10, 97.9 %). `None` below 6 samples, where no such `k` exists.
pub fn median_interval(mut v: Vec<f64>) -> Option<(f64, f64)> {
    let n = v.len();
    let k = sign_test_rank(n)?;
    v.sort_by(f64::total_cmp);
    Some((v[k - 1], v[n - k]))
}

/// The rank `k` of [`median_interval`] for `n` samples: the largest with
/// P(Binomial(n, ½) < k) ≤ 2.5 %, summed exactly in f64 (n is a few dozen at most); `None`
/// below 6 samples.
pub fn sign_test_rank(n: usize) -> Option<usize> {
    let mut below = 0.0; // P(X < k)
    let mut choose = 1.0; // C(n, j)
    let mut k = 0;
    for j in 0..n {
        let p = choose / 2f64.powi(n as i32);
        if below + p > 0.025 {
            break;
        }
        below += p;
        k = j + 1;
        choose = choose * (n - j) as f64 / (j + 1) as f64;
    }
    (k > 0).then_some(k)
}

#[cfg(test)]
mod tests {
    use super::{median_interval, ordinal};

    #[test]
    fn median_interval_takes_the_sign_test_ranks() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(median_interval(v), Some((2.0, 9.0)));
        let v: Vec<f64> = (1..=6).rev().map(f64::from).collect();
        assert_eq!(median_interval(v), Some((1.0, 6.0)));
        assert_eq!(median_interval(vec![1.0; 5]), None);
        // n = 20: P(X < 6) = 2.07 %, P(X < 7) = 5.77 %.
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(median_interval(v), Some((6.0, 15.0)));
    }

    #[test]
    fn ordinals_read_as_english() {
        let got: Vec<String> = [1, 2, 3, 4, 6, 11, 12, 13, 21, 22].map(ordinal).to_vec();
        assert_eq!(
            got,
            [
                "1st", "2nd", "3rd", "4th", "6th", "11th", "12th", "13th", "21st", "22nd"
            ]
        );
    }
}
