// SPDX-License-Identifier: MIT
pragma solidity 0.8.27;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

/// Only the Aave V3 calls this contract makes, declared here so it does not import
/// (and inherit the licence or pragma of) the protocol's sources.
interface IPoolAddressesProvider {
    function getPool() external view returns (address);
}

interface IAavePool {
    function flashLoanSimple(
        address receiverAddress,
        address asset,
        uint256 amount,
        bytes calldata params,
        uint16 referralCode
    ) external;

    function liquidationCall(
        address collateralAsset,
        address debtAsset,
        address borrower,
        uint256 debtToCover,
        bool receiveAToken
    ) external;
}

/// Uniswap V3 SwapRouter (periphery 1.x): exactInput along a packed path.
interface ISwapRouter {
    struct ExactInputParams {
        bytes path;
        address recipient;
        uint256 deadline;
        uint256 amountIn;
        uint256 amountOutMinimum;
    }

    function exactInput(ExactInputParams calldata params) external payable returns (uint256 amountOut);
}

/// @title Liquidator
/// @notice Liquidates an Aave V3 borrower with the pool's own flash loan: borrow the debt
/// asset, repay the borrower's debt, sell the seized collateral on Uniswap V3, repay the
/// loan and send what is left to the owner. The keeper needs no token inventory, only gas.
/// @dev The contract holds nothing between transactions: every liquidation ends by sending
/// its profit and any unsold collateral to the owner, and `sweep` recovers anything sent here
/// by mistake. Only the owner can start a liquidation; only the pool, during a flash loan
/// this contract started itself, can call `executeOperation`.
contract Liquidator {
    using SafeERC20 for IERC20;

    /// What the keeper decided off chain. Amounts are in the debt asset's units unless noted.
    struct Params {
        address collateralAsset;
        address debtAsset;
        address user; // the borrower to liquidate
        uint256 debtToCover; // passed to liquidationCall; type(uint256).max = as much as allowed
        uint256 flashAmount; // borrowed from the pool: expected repayment plus a margin
        bytes swapPath; // Uniswap V3 path collateral -> ... -> debt; empty when they are equal
        uint256 minSwapOut; // slippage bound on the swap's output
        uint256 minProfit; // revert unless this much debt asset is left after repaying the loan
    }

    address public immutable owner;
    /// The pool proxy, read from the provider once. Aave upgrades the pool by swapping the
    /// implementation behind this proxy, never the proxy itself, so the address is stable;
    /// an immutable saves a provider call per liquidation and makes the caller check in
    /// `executeOperation` a plain comparison. A market that moved its proxy needs a new executor.
    IAavePool public immutable POOL;
    ISwapRouter public immutable SWAP_ROUTER;

    uint256 private constant _UNLOCKED = 1;
    uint256 private constant _LOCKED = 2;
    uint256 private _lock = _UNLOCKED; // 1/2 rather than 0/1: re-locking never pays a fresh SSTORE

    event Liquidated(
        address indexed user,
        address indexed collateralAsset,
        address indexed debtAsset,
        uint256 profit
    );

    error NotOwner();
    error NotPool();
    error BadInitiator();
    error Reentrancy();
    error NotInLiquidation();
    error ZeroAddress();
    error InvalidSwapPath();
    error InsufficientProfit(uint256 got, uint256 min);

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner();
        _;
    }

    modifier nonReentrant() {
        if (_lock != _UNLOCKED) revert Reentrancy();
        _lock = _LOCKED;
        _;
        _lock = _UNLOCKED;
    }

    constructor(address addressesProvider, address swapRouter) {
        if (addressesProvider == address(0) || swapRouter == address(0)) revert ZeroAddress();
        address pool = IPoolAddressesProvider(addressesProvider).getPool();
        if (pool == address(0)) revert ZeroAddress();
        owner = msg.sender;
        POOL = IAavePool(pool);
        SWAP_ROUTER = ISwapRouter(swapRouter);
    }

    /// @notice Liquidate `p.user` with a flash loan of `p.flashAmount` debt asset.
    /// @return profit Debt asset sent to the owner (at least `p.minProfit`).
    function liquidate(Params calldata p) external onlyOwner nonReentrant returns (uint256 profit) {
        if (p.collateralAsset != p.debtAsset) _checkPath(p.swapPath, p.collateralAsset, p.debtAsset);
        POOL.flashLoanSimple(address(this), p.debtAsset, p.flashAmount, abi.encode(p), 0);

        // The loan is repaid; everything left belongs to the owner.
        profit = _sendAll(IERC20(p.debtAsset), owner);
        if (p.collateralAsset != p.debtAsset) _sendAll(IERC20(p.collateralAsset), owner);
        emit Liquidated(p.user, p.collateralAsset, p.debtAsset, profit);
    }

    /// @notice Aave's flash-loan callback: liquidate, swap, check profit, approve repayment.
    function executeOperation(
        address asset,
        uint256 amount,
        uint256 premium,
        address initiator,
        bytes calldata params
    ) external returns (bool) {
        if (msg.sender != address(POOL)) revert NotPool();
        // Anyone may flash-borrow with this contract as receiver; only our own loans count.
        if (initiator != address(this)) revert BadInitiator();
        if (_lock != _LOCKED) revert NotInLiquidation();
        Params memory p = abi.decode(params, (Params));

        // Exact approvals: the pool may pull the repaid debt now and the loan back at the end,
        // and no allowance outlives the transaction.
        IERC20(asset).forceApprove(address(POOL), amount);
        POOL.liquidationCall(p.collateralAsset, asset, p.user, p.debtToCover, false);

        if (p.collateralAsset != asset) {
            // Sell every unit of collateral held; the balance is only what was just seized.
            uint256 seized = IERC20(p.collateralAsset).balanceOf(address(this));
            IERC20(p.collateralAsset).forceApprove(address(SWAP_ROUTER), seized);
            SWAP_ROUTER.exactInput(
                ISwapRouter.ExactInputParams({
                    path: p.swapPath,
                    recipient: address(this),
                    deadline: block.timestamp,
                    amountIn: seized,
                    amountOutMinimum: p.minSwapOut
                })
            );
        }

        uint256 owed = amount + premium;
        uint256 balance = IERC20(asset).balanceOf(address(this));
        uint256 got = balance > owed ? balance - owed : 0; // a loss reports as zero profit
        if (balance < owed || got < p.minProfit) revert InsufficientProfit(got, p.minProfit);
        IERC20(asset).forceApprove(address(POOL), owed);
        return true;
    }

    /// @notice Recover the whole balance of `token` held here (tokens sent by mistake).
    function sweep(address token, address to) external onlyOwner nonReentrant {
        if (to == address(0)) revert ZeroAddress();
        _sendAll(IERC20(token), to);
    }

    function _sendAll(IERC20 token, address to) private returns (uint256 amount) {
        amount = token.balanceOf(address(this));
        if (amount != 0) token.safeTransfer(to, amount);
    }

    /// A packed path is token (20 bytes) followed by (fee (3), token (20)) per hop. Checking
    /// both ends catches a keeper bug before it sells the wrong token into the wrong pool.
    function _checkPath(bytes calldata path, address tokenIn, address tokenOut) private pure {
        if (path.length < 43 || (path.length - 20) % 23 != 0) revert InvalidSwapPath();
        if (address(bytes20(path[:20])) != tokenIn) revert InvalidSwapPath();
        if (address(bytes20(path[path.length - 20:])) != tokenOut) revert InvalidSwapPath();
    }
}
