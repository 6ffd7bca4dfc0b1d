// SPDX-License-Identifier: MIT
pragma solidity 0.8.27;

/// @notice A Chainlink-compatible price feed the devnet can move.
/// @dev Aave's MockAggregator has no setter; this one emits `AnswerUpdated`
/// exactly as Chainlink's aggregators do, so the keeper watches it like mainnet.
contract DevnetPriceFeed {
  event AnswerUpdated(int256 indexed current, uint256 indexed roundId, uint256 updatedAt);
  event NewRound(uint256 indexed roundId, address indexed startedBy, uint256 startedAt);

  address public immutable owner;
  uint8 public immutable decimals;
  string public description;

  int256 public latestAnswer;
  uint256 public latestTimestamp;
  uint256 public latestRound;

  constructor(uint8 decimals_, string memory description_, int256 answer) {
    owner = msg.sender;
    decimals = decimals_;
    description = description_;
    _update(answer);
  }

  function setAnswer(int256 answer) external {
    require(msg.sender == owner, 'ONLY_OWNER');
    _update(answer);
  }

  function version() external pure returns (uint256) {
    return 4;
  }

  function latestRoundData()
    external
    view
    returns (uint80 roundId, int256 answer, uint256 startedAt, uint256 updatedAt, uint80 answeredInRound)
  {
    return (uint80(latestRound), latestAnswer, latestTimestamp, latestTimestamp, uint80(latestRound));
  }

  function _update(int256 answer) internal {
    require(answer > 0, 'NON_POSITIVE');
    latestRound += 1;
    latestAnswer = answer;
    latestTimestamp = block.timestamp;
    emit NewRound(latestRound, msg.sender, block.timestamp);
    emit AnswerUpdated(answer, latestRound, block.timestamp);
  }
}
