import XCTest
import Foundation
@testable import Meld
import CMeld

/// Bad arguments give the right status through the C API and a thrown MeldError in Swift.
final class ErrorTests: XCTestCase {
    func testVersionAndStrings() {
        XCTAssertEqual(Int(meld_version()), Int(MELD_VERSION_MAJOR) * 10000 + Int(MELD_VERSION_MINOR) * 100 + Int(MELD_VERSION_PATCH))
        XCTAssertEqual(Version.string, "\(MELD_VERSION_MAJOR).\(MELD_VERSION_MINOR).\(MELD_VERSION_PATCH)")
        XCTAssertEqual(String(cString: meld_status_string(MELD_OK)), "ok")
        XCTAssertEqual(String(cString: meld_status_string(meld_status(rawValue: 999))), "unknown status")
        XCTAssertEqual(meld_dtype_size(MELD_BF16), 2)
        XCTAssertEqual(meld_dtype_size(meld_dtype(rawValue: 42)), 0)
    }

    /// The caller's parallel work (meld_context_parallel_for): every item once, on 1, 2 and 3
    /// threads, none for count 0; a missing function or context is an error.
    func testParallelForRunsEveryItemOnce() throws {
        for threads in [1, 2, 3] {
            let ctx = try Context(threads: threads)
            for count in [0, 1, 2, 7, 1000] {
                let lock = NSLock()
                var seen = [Int](repeating: 0, count: count)
                ctx.parallelFor(count) { i in lock.lock(); seen[i] += 1; lock.unlock() }
                XCTAssertEqual(seen, [Int](repeating: 1, count: count), "\(threads) threads, \(count) items")
            }
            XCTAssertEqual(meld_context_parallel_for(ctx.raw, 3, nil, nil), MELD_ERR_NULL_POINTER)
            XCTAssertEqual(meld_context_parallel_for(ctx.raw, 0, nil, nil), MELD_OK)
        }
        XCTAssertEqual(meld_context_parallel_for(nil, 1, { _, _ in }, nil), MELD_ERR_NULL_POINTER)
        XCTAssertEqual(meld_context_set_side_work(nil, nil, nil), MELD_ERR_NULL_POINTER)
    }

    func testCApiStatuses() throws {
        var ctx: OpaquePointer?
        XCTAssertEqual(meld_context_create(-1, &ctx), MELD_ERR_INVALID_ARGUMENT)
        XCTAssertEqual(meld_context_create(1, nil), MELD_ERR_NULL_POINTER)
        XCTAssertEqual(meld_context_create(2, &ctx), MELD_OK)
        defer { meld_context_destroy(ctx) }
        var a: [Float] = [1, 2, 3], b: [Float] = [1, 2, 3, 4], o = [Float](repeating: 0, count: 3)
        a.withUnsafeMutableBytes { ap in b.withUnsafeMutableBytes { bp in o.withUnsafeMutableBytes { op in
            let va = meld_view(data: ap.baseAddress, numel: 3, dtype: MELD_F32)
            let vb = meld_view(data: bp.baseAddress, numel: 4, dtype: MELD_F32)
            let out = meld_span(data: op.baseAddress, numel: 3, dtype: MELD_F32)
            var w: [Float] = [1, 1]
            var dens: [Double] = [0.5, 0.5]
            var opt = meld_ties_options_default()
            // n mismatch
            XCTAssertEqual(meld_linear(ctx, 2, [va, vb], &w, 1, out), MELD_ERR_SIZE_MISMATCH)
            // null data with n > 0, null weights, null context
            XCTAssertEqual(meld_linear(ctx, 2, [va, meld_view(data: nil, numel: 3, dtype: MELD_F32)], &w, 1, out), MELD_ERR_NULL_POINTER)
            XCTAssertEqual(meld_linear(ctx, 2, [va, va], nil, 1, out), MELD_ERR_NULL_POINTER)
            XCTAssertEqual(meld_linear(nil, 2, [va, va], &w, 1, out), MELD_ERR_NULL_POINTER)
            // unknown dtype
            XCTAssertEqual(meld_convert(ctx, meld_view(data: ap.baseAddress, numel: 3, dtype: meld_dtype(rawValue: 7)), out), MELD_ERR_UNSUPPORTED_DTYPE)
            // density outside [0, 1] or NaN
            dens = [0.5, 1.5]
            XCTAssertEqual(meld_ties(ctx, va, 2, [va, va], &w, &dens, &opt, out), MELD_ERR_INVALID_ARGUMENT)
            dens = [-0.1, 0.5]
            XCTAssertEqual(meld_ties(ctx, va, 2, [va, va], &w, &dens, &opt, out), MELD_ERR_INVALID_ARGUMENT)
            dens = [.nan, 0.5]
            XCTAssertEqual(meld_ties(ctx, va, 2, [va, va], &w, &dens, &opt, out), MELD_ERR_INVALID_ARGUMENT)
            // NaN weight, zero models, too many models, bad enum values
            dens = [0.5, 0.5]
            w = [.nan, 1]
            XCTAssertEqual(meld_ties(ctx, va, 2, [va, va], &w, &dens, &opt, out), MELD_ERR_INVALID_ARGUMENT)
            w = [1, 1]
            XCTAssertEqual(meld_ties(ctx, va, 0, [va, va], &w, &dens, &opt, out), MELD_ERR_INVALID_ARGUMENT)
            let many = [meld_view](repeating: va, count: 65), mw = [Float](repeating: 1, count: 65)
            XCTAssertEqual(meld_linear(ctx, 65, many, mw, 1, out), MELD_ERR_INVALID_ARGUMENT)
            opt.divisor = meld_divisor(rawValue: 9)
            XCTAssertEqual(meld_ties(ctx, va, 2, [va, va], &w, &dens, &opt, out), MELD_ERR_INVALID_ARGUMENT)
            opt = meld_ties_options_default(); opt.lambda = .infinity
            XCTAssertEqual(meld_ties(ctx, va, 2, [va, va], &w, &dens, &opt, out), MELD_ERR_INVALID_ARGUMENT)
            var sel = meld_selection()
            XCTAssertEqual(meld_select_topk(ctx, va, 4, &sel), MELD_ERR_INVALID_ARGUMENT)
            XCTAssertEqual(meld_magnitude_select(ctx, va, 0.5, nil), MELD_ERR_NULL_POINTER)
            var sign = [Int8](repeating: 0, count: 3)
            XCTAssertEqual(meld_sign_elect(ctx, 2, [va, va], nil, MELD_CONSENSUS_NONE, &sign, 3), MELD_ERR_INVALID_ARGUMENT)
            // normalize with a zero weight sum
            w = [1, -1]
            XCTAssertEqual(meld_linear(ctx, 2, [va, va], &w, 1, out), MELD_ERR_INVALID_ARGUMENT)
        } } }
    }

    func testSwiftThrows() throws {
        let ctx = try Context(threads: 1)
        XCTAssertThrowsError(try ctx.ties(base: [Float](repeating: 0, count: 3), [[1, 2]], weights: [1], densities: [0.5]) as [Float]) {
            XCTAssertEqual(($0 as? MeldError)?.status, MeldError.sizeMismatch)
        }
        XCTAssertThrowsError(try ctx.select([1, 2, 3] as [Float], density: 2)) {
            XCTAssertEqual(($0 as? MeldError)?.status, MeldError.invalidArgument)
        }
        XCTAssertThrowsError(try Context(threads: -3))
        // a call's message is its own: a bad expert id names itself, and a later failure without a
        // message does not repeat it
        XCTAssertThrowsError(try ctx.dispatchPlan(ids: [0, 7], tokens: 2, k: 1, experts: 4)) {
            XCTAssertTrue("\($0)".contains("expert id 7 at token 1"), "\($0)")
        }
        XCTAssertThrowsError(try ctx.select([1, 2, 3] as [Float], density: 2)) {
            XCTAssertEqual(($0 as? MeldError)?.message, "", "\($0)")
        }
        // weights whose magnitudes sum past f32's range: every weight-sum divisor would be
        // infinite (and the merge silently zero), so they are refused, saying why
        for call in [{ _ = try ctx.linear([[1, 2], [3, 4]] as [[Float]], weights: [3e38, 3e38]) as [Float] },
                     { _ = try ctx.ties(base: [0, 0] as [Float], [[1, 2], [3, 4]], weights: [2e38, -2e38], densities: [1, 1]) as [Float] }] {
            XCTAssertThrowsError(try call()) {
                XCTAssertEqual(($0 as? MeldError)?.status, MeldError.invalidArgument)
                XCTAssertTrue("\($0)".contains("past f32's range"), "\($0)")
            }
        }
        XCTAssertEqual(try ctx.linear([[1, 2], [3, 4]] as [[Float]], weights: [0x1p120, 0x1p120]) as [Float], [2, 3]) // large, in range
        // T * k that does not fit is an argument error, also where the product wraps around
        var plan: OpaquePointer?
        XCTAssertEqual(meld_moe_plan_create(ctx.raw, [0], 1 << 62, 8, 4, &plan), MELD_ERR_INVALID_ARGUMENT)
    }
}
