// SPDX-License-Identifier: MIT
pragma solidity 0.8.27;

interface IBaseFeed {
  function latestAnswer() external view returns (int256);
}

/// @notice A CAPO-style price adapter, shaped like Aave's (wstETH, rETH, sDAI on Aave V3 Ethereum):
/// price = base feed answer x exchange ratio, with the ratio capped by a maximum yearly growth from
/// a snapshot. Like the real ones it emits no event when its price moves: the ratio changes
/// silently (a rebase, an accrual), so a keeper can only learn the price by reading it.
contract CapoPriceAdapter {
  uint256 public constant RATIO_UNIT = 1e18;
  uint256 public constant SECONDS_PER_YEAR = 365 days;
  uint256 public constant PERCENTAGE_FACTOR = 10_000;

  address public immutable owner;
  IBaseFeed public immutable BASE_TO_USD_AGGREGATOR;
  uint8 public immutable decimals;
  string public description;

  uint256 public ratio;
  uint256 public snapshotRatio;
  uint256 public snapshotTimestamp;
  uint256 public maxYearlyGrowthBps;

  constructor(address baseFeed, uint8 decimals_, uint256 ratio_, uint256 maxYearlyGrowthBps_,
              string memory description_) {
    owner = msg.sender;
    BASE_TO_USD_AGGREGATOR = IBaseFeed(baseFeed);
    decimals = decimals_;
    description = description_;
    ratio = ratio_;
    snapshotRatio = ratio_;
    snapshotTimestamp = block.timestamp;
    maxYearlyGrowthBps = maxYearlyGrowthBps_;
  }

  /// @notice Move the exchange ratio (1e18 = 1:1). Deliberately no event.
  function setRatio(uint256 ratio_) external {
    require(msg.sender == owner, 'ONLY_OWNER');
    ratio = ratio_;
  }

  /// @notice The highest ratio the cap allows now: the snapshot grown linearly at the yearly rate.
  function getMaxRatio() public view returns (uint256) {
    uint256 elapsed = block.timestamp - snapshotTimestamp;
    return snapshotRatio + (snapshotRatio * maxYearlyGrowthBps * elapsed) / (PERCENTAGE_FACTOR * SECONDS_PER_YEAR);
  }

  function latestAnswer() public view returns (int256) {
    int256 base = BASE_TO_USD_AGGREGATOR.latestAnswer();
    if (base <= 0) return 0;
    uint256 r = ratio;
    uint256 cap = getMaxRatio();
    if (r > cap) r = cap;
    return int256((uint256(base) * r) / RATIO_UNIT);
  }
}
