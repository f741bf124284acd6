// swift-tools-version: 6.2
// 6.2+: packages that depend on Meld by URL accept its unsafeFlags (OpenMP) only from 6.2 on.
import PackageDescription

let cFlags: [CSetting] = [
    .unsafeFlags(["-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-Wall"]),
    .unsafeFlags(["-O3"], .when(configuration: .release)),
    .define("NDEBUG", .when(configuration: .release)),
]

let package = Package(
    name: "Meld",
    products: [
        .library(name: "Meld", targets: ["Meld"]),
        .executable(name: "meld", targets: ["meld"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.0"),
    ],
    targets: [
        // The C library: SIMD kernels in CKernels/, public headers in include/ (meld.h).
        .target(
            name: "CMeld",
            path: ".",
            exclude: ["CKernels/opencl", "Benchmarks"], // Benchmarks/Meld links back here: a loop to scan
            sources: ["CKernels"],
            publicHeadersPath: "include",
            cSettings: cFlags,
            linkerSettings: [.linkedLibrary("omp5"), .linkedLibrary("OpenCL"), .linkedLibrary("m")]
        ),
        .target(name: "Meld", dependencies: ["CMeld"], path: "Sources/Meld"),
        // The command-line tool's engine: safetensors I/O, mergekit configs, streaming merges.
        .target(
            name: "MeldTool",
            dependencies: ["Meld", .product(name: "Yams", package: "Yams")],
            path: "Sources/MeldTool"
        ),
        .executableTarget(
            name: "meld",
            dependencies: ["MeldTool", "Meld", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Sources/meld",
            // Release: the Swift runtime and Foundation linked in. Loading and relocating their 20
            // shared libraries took ~9 ms of every run here (`meld --version`: 14 ms -> 5.5 ms), a
            // tenth of a 150M-parameter bf16 merge. Foundation's own dependencies are named: the
            // modules compiled against the shared runtime do not list them.
            linkerSettings: [.unsafeFlags(["-static-stdlib", "-lCoreFoundation", "-l_FoundationICU", "-l_FoundationCShims",
                                           "-l_FoundationCollections", "-lswiftSynchronization"],
                                          .when(platforms: [.linux], configuration: .release))]
        ),
        .testTarget(name: "MeldTests", dependencies: ["Meld", "CMeld", "MeldTool"], path: "Tests/MeldTests"),
    ],
    cLanguageStandard: .gnu2x
)
