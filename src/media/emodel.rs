//! The ITU-T G.107 E-model (06/2015), narrowband: transmission rating R and MOS-CQE.
//!
//! All G.107 parameters are at their default values (Table 3) except those a passive tap
//! can know: the equipment impairment `Ie` and packet-loss robustness `Bpl` of the codec
//! (ITU-T G.113 Appendix I), the effective packet loss `Ppl` and its burstiness `BurstR`
//! (after the jitter buffer), and the delay (one-way `T = Ta`, round trip `Tr = 2T`), which
//! is 0 unless RTCP measured a round-trip time. With every default, R = 93.2 (§7.7).
//!
//! Wideband codecs (G.722, Opus, AMR-WB, ...) belong on the G.107.1 scale (R up to 129); they
//! are not scored rather than given a narrowband number that would mean something else.

/// Codec parameters from ITU-T G.113 Appendix I.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CodecImpairment {
    /// Equipment impairment factor.
    pub ie: f64,
    /// Packet-loss robustness factor.
    pub bpl: f64,
}

/// Why a stream has no score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotScored {
    /// A wideband codec: the narrowband E-model does not apply.
    Wideband(String),
    /// Video: no voice to score.
    Video(String),
    /// No G.113 values are known for this codec.
    UnknownCodec(String),
    /// No voice packets to judge.
    NoData,
}

/// Where the delay fed to the E-model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelaySource {
    /// Half the mean round trip computed from RTCP SR/RR capture times at the tap.
    RtcpCapture,
    /// Half the round trip an endpoint reported in an RFC 3611 VoIP metrics block.
    RtcpXr,
    /// No measurement: G.107's default delay (0 ms).
    AssumedDefault,
}

/// The inputs and result of one scoring, so a reader can see what produced the number.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub model: &'static str,
    pub codec: String,
    pub ie: f64,
    pub bpl: f64,
    pub packet_loss_percent: f64,
    pub burst_ratio: f64,
    pub one_way_delay_ms: f64,
    pub delay_source: DelaySource,
    pub jitter_buffer_ms: f64,
    pub r_factor: f64,
    pub mos: f64,
}

/// Model id written into every score.
pub const MODEL: &str =
    "ITU-T G.107 (06/2015) E-model, default parameters; codec Ie/Bpl from G.113 App. I";

/// G.113 Appendix I values for the narrowband codecs seen on contact-centre trunks.
/// G.711 is taken with packet loss concealment (App. I of G.711), as every current phone
/// and gateway does it.
pub fn codec_impairment(codec: &str) -> Result<CodecImpairment, NotScored> {
    let name = codec.to_ascii_uppercase();
    let values = match name.as_str() {
        "PCMU" | "PCMA" | "G711" | "G711U" | "G711A" => (0.0, 25.1),
        "G729" | "G729A" | "G729AB" => (11.0, 19.0),
        "G723" | "G7231" => (15.0, 16.1),
        "GSM-EFR" => (5.0, 10.0),
        "G722" | "G7221" | "OPUS" | "AMR-WB" | "SILK" | "L16" | "EVS" | "SPEEX" => {
            return Err(NotScored::Wideband(codec.to_owned()))
        }
        "JPEG" | "H261" | "H263" | "H263-1998" | "H263-2000" | "H264" | "H265" | "MPV" | "MP2T"
        | "CELB" | "NV" | "VP8" | "VP9" | "AV1" => return Err(NotScored::Video(codec.to_owned())),
        _ => return Err(NotScored::UnknownCodec(codec.to_owned())),
    };
    Ok(CodecImpairment {
        ie: values.0,
        bpl: values.1,
    })
}

/// Computes R with G.107's default parameters, the given codec impairment, effective loss
/// `ppl` (percent), `burst_r` and one-way delay `t_ms`.
pub fn r_factor(codec: CodecImpairment, ppl: f64, burst_r: f64, t_ms: f64) -> f64 {
    // Table 3 defaults.
    let (slr, rlr, ds, stmr, lstr, telr, wepl, qdu, a) =
        (8.0, 2.0, 3.0, 15.0, 18.0, 65.0, 110.0, 1.0_f64, 0.0);
    let (nc, nfor, ps, pr) = (-70.0_f64, -64.0, 35.0, 35.0);
    let (t, ta, tr) = (t_ms, t_ms, 2.0 * t_ms);
    let olr = slr + rlr;

    // §7.2 basic signal-to-noise ratio.
    let nos = ps - slr - ds - 100.0 + 0.004 * (ps - olr - ds - 14.0_f64).powi(2);
    let pre = pr + 10.0 * (1.0 + 10f64.powf((10.0 - lstr) / 10.0)).log10();
    let nor = rlr - 121.0 + pre + 0.008 * (pre - 35.0).powi(2);
    let nfo = nfor + rlr;
    let no = 10.0
        * (10f64.powf(nc / 10.0)
            + 10f64.powf(nos / 10.0)
            + 10f64.powf(nor / 10.0)
            + 10f64.powf(nfo / 10.0))
        .log10();
    let ro = 15.0 - 1.5 * (slr + no);

    // §7.3 simultaneous impairment.
    let xolr = olr + 0.2 * (64.0 + no - rlr);
    let iolr = 20.0 * ((1.0 + (xolr / 8.0).powi(8)).powf(1.0 / 8.0) - xolr / 8.0);
    let stmro =
        -10.0 * (10f64.powf(-stmr / 10.0) + (-t / 4.0).exp() * 10f64.powf(-telr / 10.0)).log10();
    let ist = 12.0 * (1.0 + ((stmro - 13.0) / 6.0).powi(8)).powf(1.0 / 8.0)
        - 28.0 * (1.0 + ((stmro + 1.0) / 19.4).powi(35)).powf(1.0 / 35.0)
        - 13.0 * (1.0 + ((stmro - 3.0) / 33.0).powi(13)).powf(1.0 / 13.0)
        + 29.0;
    let q = 37.0 - 15.0 * qdu.log10();
    let g = 1.07 + 0.258 * q + 0.0602 * q * q;
    let z = 46.0 / 30.0 - g / 40.0;
    let y = (ro - 100.0) / 15.0 + 46.0 / 8.4 - g / 9.0;
    let iq = 15.0 * (1.0 + 10f64.powf(y) + 10f64.powf(z)).log10();
    let is = iolr + ist + iq;

    // §7.4 delay impairment.
    let terv =
        telr - 40.0 * ((1.0 + t / 10.0) / (1.0 + t / 150.0)).log10() + 6.0 * (-0.3 * t * t).exp();
    let roe = -1.5 * (no - rlr);
    let re = 80.0 + 2.5 * (terv - 14.0);
    let idte =
        ((roe - re) / 2.0 + ((roe - re).powi(2) / 4.0 + 100.0).sqrt() - 1.0) * (1.0 - (-t).exp());
    let rle = 10.5 * (wepl + 7.0) * (tr + 1.0).powf(-0.25);
    let idle = (ro - rle) / 2.0 + ((ro - rle).powi(2) / 4.0 + 169.0).sqrt();
    let idd = if ta <= 100.0 {
        0.0
    } else {
        let x = (ta / 100.0).log10() / 2f64.log10();
        25.0 * ((1.0 + x.powi(6)).powf(1.0 / 6.0) - 3.0 * (1.0 + (x / 3.0).powi(6)).powf(1.0 / 6.0)
            + 2.0)
    };
    let id = idte + idle + idd;

    // §7.5 equipment impairment with random or bursty loss.
    let burst_r = burst_r.max(1.0);
    let ie_eff = if ppl > 0.0 {
        codec.ie + (95.0 - codec.ie) * ppl / (ppl / burst_r + codec.bpl)
    } else {
        codec.ie
    };

    ro - is - id - ie_eff + a
}

/// MOS-CQE from R (G.107 Annex B).
///
/// ```
/// use teledge::media::emodel::{codec_impairment, mos, r_factor};
///
/// // G.711 without loss or delay: the E-model's default R of 93.2, MOS 4.41.
/// let r = r_factor(codec_impairment("PCMA").unwrap(), 0.0, 1.0, 0.0);
/// assert!((mos(r) - 4.41).abs() < 0.01);
/// ```
pub fn mos(r: f64) -> f64 {
    if r <= 0.0 {
        1.0
    } else if r >= 100.0 {
        4.5
    } else {
        1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6
    }
}

/// A score as records write it (`score` of a *stream*).
impl From<&Score> for crate::record::media::Score {
    fn from(s: &Score) -> Self {
        use crate::record::media::DelaySource as D;
        crate::record::media::Score {
            model: s.model,
            codec: s.codec.clone(),
            ie: s.ie,
            bpl: s.bpl,
            packet_loss_percent: s.packet_loss_percent,
            burst_ratio: s.burst_ratio,
            one_way_delay_ms: s.one_way_delay_ms,
            delay_source: match s.delay_source {
                DelaySource::RtcpCapture => D::RtcpCapture,
                DelaySource::RtcpXr => D::RtcpXr,
                DelaySource::AssumedDefault => D::AssumedDefault,
            },
            jitter_buffer_ms: s.jitter_buffer_ms,
            r_factor: s.r_factor,
            mos: s.mos,
        }
    }
}

/// Why not, as records write it (`not_scored` of a *stream*).
impl From<&NotScored> for crate::record::media::NotScored {
    fn from(n: &NotScored) -> Self {
        use crate::record::media::NotScored as R;
        match n {
            NotScored::Wideband(codec) => R::Wideband(codec.clone()),
            NotScored::Video(codec) => R::Video(codec.clone()),
            NotScored::UnknownCodec(codec) => R::UnknownCodec(codec.clone()),
            NotScored::NoData => R::NoData,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G711: CodecImpairment = CodecImpairment { ie: 0.0, bpl: 25.1 };

    #[test]
    fn defaults_give_93_2() {
        let r = r_factor(G711, 0.0, 1.0, 0.0);
        assert!((r - 93.2).abs() < 0.05, "{r}");
        assert!((mos(r) - 4.41).abs() < 0.005, "{}", mos(r));
    }

    #[test]
    fn random_loss_follows_ie_eff() {
        // 2 % random loss on G.711 with PLC: Ie,eff = 95·2/(2 + 25.1) = 7.011.
        let r = r_factor(G711, 2.0, 1.0, 0.0);
        let r0 = r_factor(G711, 0.0, 1.0, 0.0);
        assert!((r0 - r - 95.0 * 2.0 / 27.1).abs() < 1e-9);
        // Bursty loss is worse than random loss at the same rate.
        let bursty = r_factor(G711, 2.0, 2.0, 0.0);
        let expected = 95.0 * 2.0 / (2.0 / 2.0 + 25.1);
        assert!((r0 - bursty - expected).abs() < 1e-9);
        assert!(bursty < r);
    }

    #[test]
    fn g729_starts_lower_and_delay_hurts() {
        let g729 = codec_impairment("G729").unwrap();
        assert!((r_factor(g729, 0.0, 1.0, 0.0) - (93.2 - 11.0)).abs() < 0.05);
        // 300 ms one way costs much more than 100 ms (Idd starts above Ta = 100 ms).
        let near = r_factor(G711, 0.0, 1.0, 100.0);
        let far = r_factor(G711, 0.0, 1.0, 300.0);
        assert!(far < near - 10.0, "{near} {far}");
    }

    #[test]
    fn mos_mapping_bounds() {
        assert_eq!(mos(-5.0), 1.0);
        assert_eq!(mos(120.0), 4.5);
        assert!((mos(50.0) - 2.58).abs() < 0.01);
    }

    #[test]
    fn wideband_is_not_scored() {
        assert_eq!(
            codec_impairment("G722"),
            Err(NotScored::Wideband("G722".into()))
        );
        assert_eq!(
            codec_impairment("opus"),
            Err(NotScored::Wideband("opus".into()))
        );
        assert_eq!(
            codec_impairment("iLBC"),
            Err(NotScored::UnknownCodec("iLBC".into()))
        );
    }
}
